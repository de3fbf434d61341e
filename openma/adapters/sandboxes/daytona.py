"""Daytona sandboxes behind the Sandbox port, on the official ``daytona`` SDK (never ``daytona-sdk``, a renamed
copy whose exception classes are different classes).

``pip install 'openma[daytona]'``; set ``DAYTONA_API_KEY``. What the SDK does not give, openma adds (see
``docs/sandboxes.md``):

* **Deadlines.** ``process.exec`` throws the output away on a timeout, and its HTTP call dies at 300 s when
  no timeout is given. Every command runs under the in-sandbox watchdog of :mod:`._shell` (the process
  tree is killed, what it printed is kept) and the daemon gets a deadline a little later; the adapter
  always passes one.
* **Merged output.** ``exec`` returns stdout and stderr as one stream. The command script sends the
  command's stderr to a file in the sandbox and prints it after stdout behind a per-call marker, so
  ``ExecResult`` has them apart in the same single round trip (what is lost is only their interleaving).
* **Keepalive** is "alive for at least N more seconds": Daytona stops a sandbox after an *idle* interval
  in minutes, so the adapter raises the interval when N needs it and refreshes the activity clock.
* **Bytes.** ``fs.upload_file`` treats a ``str`` as a local path and ``fs.download_file`` takes positional
  arguments only; the adapter always passes ``bytes`` and positionals.
* **Leaks.** Sandboxes are labelled (``openma=1``, tenant, session), stop after the lifetime's idle
  minutes and are deleted when they stop (``auto_delete_interval=0``); a sandbox created by a ``create``
  that timed out is deleted at once. Create and delete back off on 429/503, which the SDK does not retry.

The SDK is asyncio-only (aiohttp), so this adapter refuses to open on trio.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

import anyio

from openma.adapters.sandboxes import _shell
from openma.adapters.sandboxes._remote import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_STATE_DIR,
    Entry,
    RemoteSandbox,
    ShellResult,
    openma_labels,
)
from openma.adapters.sandboxes.e2b import require_asyncio
from openma.errors import (
    ConfigError,
    InvalidInput,
    NotFound,
    OpenmaError,
    SandboxError,
    SandboxGone,
    SandboxRateLimited,
    SandboxTimeout,
)
from openma.ports.blobs import BlobStore
from openma.ports.sandbox import SandboxSpec

if TYPE_CHECKING:
    from openma.settings import Settings

T = TypeVar("T")

DEFAULT_API_URL: Final = "https://app.daytona.io/api"
DEFAULT_WORKDIR: Final = "/home/daytona/workspace"
CAPABILITIES: Final = frozenset(
    {
        "background",
        "separate_stderr",
        "secrets",
        "snapshot",
        "keepalive",
        "oom_detection",
        "absolute_paths",
        "isolation",
    }
)
#: Seconds ``create`` may take (it waits for the sandbox to start).
CREATE_TIMEOUT: Final = 120.0
#: Attempts (and first backoff in seconds) for create/delete on 429/503.
RETRIES: Final = 4
BACKOFF: Final = 0.5


def _import_sdk() -> Any:
    try:
        import daytona
    except ImportError as exc:
        raise ConfigError(
            f"the daytona sandbox needs the daytona SDK ({exc}); install it with: pip install 'openma[daytona]'",
            extra="daytona",
        ) from exc
    return daytona


def translate(exc: BaseException, what: str, **details: Any) -> OpenmaError | None:
    """The openma error for an exception the Daytona SDK raised, or ``None`` if it is not a provider error."""
    from daytona.common import errors as ex

    if not isinstance(exc, ex.DaytonaError):
        return None
    message = f"daytona: {what}: {exc.message}"
    status = exc.status_code
    # Some calls (bulk upload) raise a plain DaytonaError with only the status: look at it too.
    if isinstance(exc, ex.DaytonaRateLimitError) or status == 429:
        return SandboxRateLimited(message, **details)
    if isinstance(exc, ex.DaytonaFileNotFoundError) or exc.code == "FILE_NOT_FOUND":
        return NotFound(message, **details)
    if isinstance(exc, ex.DaytonaNotFoundError | ex.DaytonaGoneError) or status in (404, 410):
        # The control plane or the proxy does not know the sandbox: it is gone, not a missing file.
        if exc.source in (ex.SOURCE_API, ex.SOURCE_PROXY) or (exc.source is None and "sandbox" in exc.message.lower()):
            return SandboxGone(message, **details)
        return NotFound(message, **details)
    if isinstance(exc, ex.DaytonaTimeoutError):
        return SandboxTimeout(message, **details)
    if isinstance(exc, ex.DaytonaBadRequestError | ex.DaytonaUnprocessableEntityError):
        return InvalidInput(message, **details)
    if isinstance(exc, ex.DaytonaAuthenticationError | ex.DaytonaForbiddenError):
        return ConfigError(f"{message} (check DAYTONA_API_KEY)", **details)
    return SandboxError(message, **details)


@contextlib.contextmanager
def _errors(what: str, **details: Any) -> Iterator[None]:
    try:
        yield
    except OpenmaError:
        raise
    except Exception as exc:
        mapped = translate(exc, what, **details)
        if mapped is None:
            raise
        raise mapped from exc


async def _backoff(call: Callable[[], Awaitable[T]], what: str, **details: Any) -> T:
    """``call()``, retried with exponential backoff on 429 and 503 (the SDK retries neither)."""
    from daytona.common import errors as ex

    delay = BACKOFF
    for attempt in range(RETRIES):
        try:
            with _errors(what, **details):
                return await call()
        except (SandboxRateLimited, SandboxError) as exc:
            cause = exc.__cause__
            retry = isinstance(cause, ex.DaytonaRateLimitError | ex.DaytonaServiceUnavailableError)
            if not retry or attempt == RETRIES - 1:
                raise
        await anyio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def model(cls: Any, **fields: Any) -> Any:
    """``cls(**fields)`` for a pydantic params model, refusing a field it does not have.

    Daytona's params models ignore unknown fields silently, so a renamed field would be dropped at
    runtime with no error; this turns that into a :class:`ConfigError` (and a failing test).
    """
    unknown = sorted(set(fields) - set(cls.model_fields))
    if unknown:
        raise ConfigError(f"daytona: {cls.__name__} has no field(s) {unknown}; the SDK changed")
    return cls(**fields)


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class DaytonaSandbox(RemoteSandbox):
    """One Daytona sandbox. Created by :class:`DaytonaProvider`."""

    provider: ClassVar[str] = "daytona"
    capabilities = CAPABILITIES
    merged_output = True

    def __init__(self, sdk_sandbox: Any, *, spec: SandboxSpec, blobs: BlobStore | None, **kwargs: Any) -> None:
        super().__init__(sandbox_id=str(sdk_sandbox.id), spec=spec, blobs=blobs, **kwargs)
        self._sb = sdk_sandbox
        interval = getattr(sdk_sandbox, "auto_stop_interval", None)
        self._autostop: int | None = int(interval) if isinstance(interval, int | float) else None

    async def _shell(self, script: str, *, timeout: float, env: Mapping[str, str]) -> ShellResult:
        from daytona import DaytonaTimeoutError

        command = f"bash -lc {_shell.q(script)}"
        deadline = math.ceil(timeout + _shell.GRACE)
        try:
            # The SDK's HTTP deadline is the daemon's + 5 s; ours trails both.
            with anyio.fail_after(deadline + 5 + _shell.GRACE):
                response = await self._sb.process.exec(command, env=dict(env) or None, timeout=deadline)
        except (TimeoutError, DaytonaTimeoutError):
            # The daemon killed the command (or the call died) and Daytona drops its output.
            return ShellResult(_shell.TIMEOUT_EXIT, "", "", expired=True)
        except Exception as exc:
            mapped = translate(exc, "run command", sandbox_id=self._id)
            if mapped is None:
                raise
            raise mapped from exc
        code = response.exit_code if response.exit_code is not None else -1
        return ShellResult(int(code), response.result or "", "")

    async def _read(self, path: str) -> bytes:
        with _errors("read file", path=path, sandbox_id=self._id):
            data = await self._sb.fs.download_file(path)
        return bytes(data or b"")

    async def _read_many(self, paths: Sequence[str]) -> list[bytes]:
        from daytona import FileDownloadRequest
        from daytona.common.filesystem import create_file_download_error

        with _errors("read files", sandbox_id=self._id):
            results = await self._sb.fs.download_files([FileDownloadRequest(source=p) for p in paths])
            out: list[bytes] = []
            for result in results:
                if result.error:
                    raise create_file_download_error(result)
                data = result.result
                out.append(data.encode() if isinstance(data, str) else bytes(data or b""))
        return out

    async def _write(self, path: str, data: bytes) -> None:
        with _errors("write file", path=path, sandbox_id=self._id):
            await self._sb.fs.upload_file(bytes(data), path)

    async def _list(self, path: str) -> list[Entry]:
        with _errors("list files", path=path, sandbox_id=self._id):
            infos = await self._sb.fs.list_files(path)
        return [
            Entry(
                path=str(getattr(i, "path", None) or f"{path.rstrip('/')}/{i.name}"),
                is_dir=bool(i.is_dir),
                size=int(i.size or 0),
                modified_at=_parse_time(getattr(i, "modified_at", None)),
            )
            for i in infos
        ]

    async def _exists(self, path: str) -> bool:
        try:
            with _errors("stat file", path=path, sandbox_id=self._id):
                await self._sb.fs.get_file_info(path)
        except NotFound:
            return False
        return True

    async def _extend(self, seconds: float) -> None:
        # Daytona stops a sandbox after an idle interval (minutes): make the interval long enough, then
        # reset the idle clock.
        minutes = max(1, math.ceil(seconds / 60))
        with _errors("keepalive", sandbox_id=self._id):
            if self._autostop is not None and self._autostop != 0 and minutes > self._autostop:
                await self._sb.set_autostop_interval(minutes)
                self._autostop = minutes
            await self._sb.refresh_activity()

    async def _kill_sandbox(self) -> None:
        try:
            await _backoff(lambda: self._sb.delete(), "delete", sandbox_id=self._id)
        except (NotFound, SandboxGone):
            pass

    async def _prepare(self) -> None:
        dirs = " ".join(_shell.q(d) for d in (self.workdir, f"{self._state_dir}/run", f"{self._state_dir}/p"))
        raw = await self._shell(f"mkdir -p {dirs}", timeout=30.0, env={})
        if raw.exit_code != 0:
            raise SandboxError(f"daytona: could not create the workspace {self.workdir}: {raw.stdout.strip()}")


def network_wall(spec: SandboxSpec) -> dict[str, Any]:
    """Daytona's own network control as a second wall behind the egress proxy: only the proxy's address is
    reachable (``network_allow_list`` takes CIDRs, so this needs the proxy's advertised host to be an IP
    address; with a host name the proxy variables are the only wall). Nothing without ``spec.egress``."""
    if spec.egress is None:
        return {}
    try:
        address = ipaddress.ip_address(spec.egress.host.strip("[]"))
    except ValueError:
        return {}
    return {"network_block_all": False, "network_allow_list": f"{address}/{address.max_prefixlen}"}


class DaytonaProvider:
    """Creates, finds and sweeps Daytona sandboxes through one client (closed by :meth:`aclose`)."""

    name = "daytona"

    def __init__(self, settings: Settings, client: Any, *, blobs: BlobStore | None) -> None:
        self._settings = settings
        self._client = client
        self._blobs = blobs

    def __repr__(self) -> str:
        return f"DaytonaProvider({self._settings.daytona_api_url or DEFAULT_API_URL!r})"

    def _wrap(self, sdk_sandbox: Any, spec: SandboxSpec) -> DaytonaSandbox:
        options = spec.options
        return DaytonaSandbox(
            sdk_sandbox,
            spec=spec,
            blobs=self._blobs,
            workdir=str(options.get("workdir", DEFAULT_WORKDIR)),
            state_dir=str(options.get("state_dir", DEFAULT_STATE_DIR)),
            max_output=int(options.get("max_output_bytes", DEFAULT_MAX_OUTPUT)),
        )

    def params(self, spec: SandboxSpec) -> Any:
        """The SDK's create params for ``spec`` (an image builds a sandbox; else a snapshot, or the default)."""
        from daytona import CreateSandboxFromImageParams, CreateSandboxFromSnapshotParams

        common: dict[str, Any] = {
            "env_vars": dict(spec.env),
            "labels": openma_labels(spec),
            # Stop after the lifetime's idle minutes, and delete on stop: a leaked sandbox frees itself.
            "auto_stop_interval": max(1, math.ceil(spec.lifetime / 60)),
            "auto_delete_interval": 0,
            **network_wall(spec),
        }
        image = spec.image or self._settings.daytona_image
        resources = self.resources(spec)
        if image:
            if resources is not None:
                common["resources"] = resources
            return model(CreateSandboxFromImageParams, image=image, **common)
        if resources is not None:
            raise ConfigError(
                "daytona: cpu/memory/disk resources apply to sandboxes built from an image (Daytona sizes a "
                "snapshot's sandboxes itself): set DAYTONA_IMAGE or the environment's image"
            )
        snapshot = spec.options.get("snapshot")
        return model(CreateSandboxFromSnapshotParams, snapshot=str(snapshot) if snapshot else None, **common)

    def resources(self, spec: SandboxSpec) -> Any:
        """The SDK's ``Resources`` for ``spec`` (``None`` when none is set): the environment's
        ``sandbox.resources`` (``{"cpu", "memory", "disk"}``, memory and disk in GiB) over the settings
        (``DAYTONA_CPU``, ``DAYTONA_MEMORY``, ``DAYTONA_DISK``)."""
        from daytona import Resources

        given = spec.options.get("resources", {})
        if not isinstance(given, Mapping) or set(given) - {"cpu", "memory", "disk"}:
            raise InvalidInput("sandbox resources must be an object with cpu, memory and disk", field="resources")
        values: dict[str, Any] = {}
        for name in ("cpu", "memory", "disk"):
            value = given.get(name, getattr(self._settings, f"daytona_{name}"))
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInput(f"sandbox resources: {name} must be a positive integer", field="resources")
            values[name] = value
        return Resources(**values) if values else None

    async def create(self, spec: SandboxSpec) -> DaytonaSandbox:
        from daytona import DaytonaTimeoutError

        params = self.params(spec)
        timeout = float(spec.options.get("create_timeout", CREATE_TIMEOUT))

        async def call() -> Any:
            try:
                return await self._client.create(params, timeout=timeout)
            except DaytonaTimeoutError as exc:
                # The sandbox may exist already: delete it, or it leaks until its idle stop.
                created = getattr(exc, "sandbox_id", None)
                if created:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await self._delete(str(created))
                raise

        sdk_sandbox = await _backoff(call, "create sandbox", tenant_id=spec.tenant_id, session_id=spec.session_id)
        sandbox = self._wrap(sdk_sandbox, spec)
        try:
            await sandbox._prepare()
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sandbox.destroy()
            raise
        return sandbox

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> DaytonaSandbox:
        from daytona import SandboxState

        try:
            with _errors("get sandbox", sandbox_id=sandbox_id):
                sdk_sandbox = await self._client.get(sandbox_id)
        except (SandboxGone, NotFound) as exc:
            raise NotFound(f"daytona sandbox {sandbox_id} does not exist", sandbox_id=sandbox_id) from exc
        state = getattr(sdk_sandbox, "state", None)
        if state in (SandboxState.DESTROYED, SandboxState.DESTROYING):
            raise NotFound(f"daytona sandbox {sandbox_id} does not exist", sandbox_id=sandbox_id)
        if state != SandboxState.STARTED:
            with _errors("start sandbox", sandbox_id=sandbox_id):
                await sdk_sandbox.start()
        return self._wrap(sdk_sandbox, spec)

    async def list_labeled(self, labels: Mapping[str, str]) -> list[tuple[str, datetime | None]]:
        from daytona import ListSandboxesQuery

        found: list[tuple[str, datetime | None]] = []
        with _errors("list sandboxes"):
            async for sb in self._client.list(ListSandboxesQuery(labels=dict(labels))):
                found.append((str(sb.id), _parse_time(getattr(sb, "created_at", None))))
        return found

    async def _delete(self, sandbox_id: str) -> None:
        sdk_sandbox = await self._client.get(sandbox_id)
        await sdk_sandbox.delete()

    async def destroy_id(self, sandbox_id: str) -> None:
        try:
            await _backoff(lambda: self._delete(sandbox_id), "delete", sandbox_id=sandbox_id)
        except (NotFound, SandboxGone):
            pass

    async def aclose(self) -> None:
        with _errors("close"):
            await self._client.close()


async def open_sandbox_provider(settings: Settings, *, blobs: BlobStore | None = None) -> DaytonaProvider:
    """The registry's factory for ``daytona``."""
    _import_sdk()
    require_asyncio("daytona")
    if not settings.daytona_api_key:
        raise ConfigError("the daytona sandbox needs an API key: set DAYTONA_API_KEY (settings.daytona_api_key)")
    from daytona import AsyncDaytona, DaytonaConfig

    config = model(
        DaytonaConfig,
        api_key=settings.daytona_api_key,
        # Always explicit: with none, the SDK falls back to its deprecated server_url (and warns).
        api_url=settings.daytona_api_url or os.environ.get("DAYTONA_API_URL") or DEFAULT_API_URL,
        target=settings.daytona_target,
    )
    with _errors("open client"):
        client = AsyncDaytona(config)
    return DaytonaProvider(settings, client, blobs=blobs)
