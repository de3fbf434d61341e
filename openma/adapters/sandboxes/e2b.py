"""E2B sandboxes (Firecracker microVMs) behind the Sandbox port, on the official ``e2b`` SDK.

``pip install 'openma[e2b]'``; set ``E2B_API_KEY``. What the SDK does not give, openma adds (see
``docs/sandboxes.md``):

* **Deadlines.** Every command runs under the in-sandbox watchdog of :mod:`._shell` (the process tree is
  killed, what it printed is kept); envd gets a deadline :data:`~._shell.GRACE` seconds later, and the
  adapter an outer one after that, because the SDK's own client deadline never fires on Python 3.11.
  ``SandboxNotRunningException`` is a subclass of ``TimeoutException`` but means the sandbox is gone: it is
  :class:`~openma.errors.SandboxGone`, never a command timeout.
* **Keepalive** is "alive for at least N more seconds": E2B's ``set_timeout`` counts from now and can
  shorten the lifetime, so the adapter never asks for less than what it knows is left.
* **Bytes.** ``files.read(format="bytes")`` returns a ``bytearray``; the port returns ``bytes``.
* **Labels** go in the sandbox metadata (``openma=1``, tenant, session), which the leak sweeper lists.

The SDK is asyncio-only (its command handles are asyncio tasks), so this adapter refuses to open on trio.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final

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

DEFAULT_WORKDIR: Final = "/home/user/workspace"
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


def _import_sdk() -> Any:
    try:
        import e2b
    except ImportError as exc:
        raise ConfigError(
            f"the e2b sandbox needs the e2b SDK ({exc}); install it with: pip install 'openma[e2b]'",
            extra="e2b",
        ) from exc
    return e2b


def require_asyncio(provider: str) -> None:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError(
            f"the {provider} sandbox runs on asyncio only (its SDK is asyncio-native); "
            "run openma under asyncio to use it"
        ) from None


def translate(exc: BaseException, what: str, **details: Any) -> OpenmaError | None:
    """The openma error for an exception the E2B SDK raised, or ``None`` if it is not a provider error."""
    import httpx
    from e2b import exceptions as ex

    message = f"e2b: {what}: {exc}"
    # Order matters: SandboxNotRunningException is a TimeoutException, and "gone" is not a timeout.
    if isinstance(exc, ex.SandboxNotRunningException | ex.SandboxNotFoundException):
        return SandboxGone(message, **details)
    if isinstance(exc, ex.FileNotFoundException):
        return NotFound(message, **details)
    if isinstance(exc, ex.RateLimitException):
        return SandboxRateLimited(message, **details)
    if isinstance(exc, ex.TimeoutException):
        return SandboxTimeout(message, **details)
    if isinstance(exc, ex.InvalidArgumentException):
        return InvalidInput(message, **details)
    if isinstance(exc, ex.AuthenticationException):
        return ConfigError(f"{message} (check E2B_API_KEY)", **details)
    if isinstance(exc, ex.NotFoundException):
        return NotFound(message, **details)
    if isinstance(exc, ex.SandboxException | ex.ServiceBusyException | httpx.HTTPError | OSError):
        return SandboxError(message, **details)
    return None


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


class E2BSandbox(RemoteSandbox):
    """One E2B sandbox. Created by :class:`E2BProvider`."""

    provider: ClassVar[str] = "e2b"
    capabilities = CAPABILITIES

    def __init__(self, sdk_sandbox: Any, *, spec: SandboxSpec, blobs: BlobStore | None, **kwargs: Any) -> None:
        super().__init__(sandbox_id=sdk_sandbox.sandbox_id, spec=spec, blobs=blobs, **kwargs)
        self._sbx = sdk_sandbox
        #: Monotonic time until which the sandbox is known to live (``None``: unknown).
        self._alive_until: float | None = None

    async def _shell(self, script: str, *, timeout: float, env: Mapping[str, str]) -> ShellResult:
        from e2b import CommandExitException, TimeoutException

        with _errors("run command", sandbox_id=self._id):
            handle = await self._sbx.commands.run(
                script, background=True, envs=dict(env), timeout=timeout + _shell.GRACE
            )
        try:
            with anyio.fail_after(timeout + 2 * _shell.GRACE):
                try:
                    result = await handle.wait()
                except CommandExitException as exc:
                    # -1: envd killed the wrapper at its own deadline (a signal, so no exit status).
                    return ShellResult(exc.exit_code, exc.stdout or "", exc.stderr or "", expired=exc.exit_code < 0)
                except TimeoutException as exc:
                    mapped = translate(exc, "run command", sandbox_id=self._id)
                    if isinstance(mapped, SandboxGone):
                        raise mapped from exc
                    return ShellResult(_shell.TIMEOUT_EXIT, handle.stdout or "", handle.stderr or "", expired=True)
                except OpenmaError:
                    raise
                except Exception as exc:
                    mapped = translate(exc, "run command", sandbox_id=self._id)
                    if mapped is None:
                        raise
                    raise mapped from exc
                return ShellResult(result.exit_code, result.stdout or "", result.stderr or "")
        except TimeoutError:
            with anyio.move_on_after(_shell.GRACE), contextlib.suppress(Exception):
                await handle.kill()
            with contextlib.suppress(Exception):
                await handle.disconnect()
            return ShellResult(_shell.TIMEOUT_EXIT, handle.stdout or "", handle.stderr or "", expired=True)

    async def _read(self, path: str) -> bytes:
        with _errors("read file", path=path, sandbox_id=self._id):
            data = await self._sbx.files.read(path, format="bytes")
        return bytes(data)

    async def _write(self, path: str, data: bytes) -> None:
        with _errors("write file", path=path, sandbox_id=self._id):
            await self._sbx.files.write(path, data)

    async def _list(self, path: str) -> list[Entry]:
        from e2b import FileType

        with _errors("list files", path=path, sandbox_id=self._id):
            entries = await self._sbx.files.list(path, depth=1)
        return [
            Entry(
                path=e.path,
                is_dir=e.type == FileType.DIR,
                size=int(e.size or 0),
                modified_at=e.modified_time if isinstance(e.modified_time, datetime) else None,
            )
            for e in entries
        ]

    async def _exists(self, path: str) -> bool:
        with _errors("stat file", path=path, sandbox_id=self._id):
            return bool(await self._sbx.files.exists(path))

    async def _extend(self, seconds: float) -> None:
        now = time.monotonic()
        left = (self._alive_until - now) if self._alive_until is not None else 0.0
        # set_timeout counts from now and may shorten the lifetime: never ask for less than what is left.
        target = max(seconds, left)
        with _errors("set timeout", sandbox_id=self._id):
            await self._sbx.set_timeout(math.ceil(target))
        self._alive_until = now + target

    async def _kill_sandbox(self) -> None:
        with _errors("kill", sandbox_id=self._id):
            await self._sbx.kill()

    async def _prepare(self) -> None:
        """Create the workspace and state directories."""
        dirs = " ".join(_shell.q(d) for d in (self.workdir, f"{self._state_dir}/run", f"{self._state_dir}/p"))
        raw = await self._shell(f"mkdir -p {dirs}", timeout=30.0, env={})
        if raw.exit_code != 0:
            raise SandboxError(f"e2b: could not create the workspace {self.workdir}: {raw.stderr.strip()}")


def network_wall(spec: SandboxSpec) -> dict[str, Any]:
    """E2B's own network control as a second wall behind the egress proxy: no internet access except the
    proxy's address (E2B's ``allow_out`` takes precedence over ``deny_out``). Nothing without ``spec.egress``."""
    if spec.egress is None:
        return {}
    return {
        "allow_internet_access": False,
        "network": {"allow_out": [spec.egress.host], "deny_out": ["0.0.0.0/0"]},
    }


class E2BProvider:
    """Creates, finds and sweeps E2B sandboxes with one set of connection options."""

    name = "e2b"

    def __init__(self, settings: Settings, *, blobs: BlobStore | None) -> None:
        self._settings = settings
        self._blobs = blobs
        opts = {
            "api_key": settings.e2b_api_key,
            "domain": settings.e2b_domain,
            "api_url": settings.e2b_api_url,
            "sandbox_url": settings.e2b_sandbox_url,
        }
        self._opts: dict[str, Any] = {k: v for k, v in opts.items() if v}

    def __repr__(self) -> str:
        where = self._opts.get("api_url") or self._opts.get("domain") or "e2b.app"
        return f"E2BProvider({where!r})"

    def _wrap(self, sdk_sandbox: Any, spec: SandboxSpec) -> E2BSandbox:
        options = spec.options
        return E2BSandbox(
            sdk_sandbox,
            spec=spec,
            blobs=self._blobs,
            workdir=str(options.get("workdir", DEFAULT_WORKDIR)),
            state_dir=str(options.get("state_dir", DEFAULT_STATE_DIR)),
            max_output=int(options.get("max_output_bytes", DEFAULT_MAX_OUTPUT)),
        )

    async def create(self, spec: SandboxSpec) -> E2BSandbox:
        from e2b import AsyncSandbox

        lifetime = max(1, math.ceil(spec.lifetime))
        template = spec.image or self._settings.e2b_template or None
        with _errors("create sandbox", tenant_id=spec.tenant_id, session_id=spec.session_id):
            sdk_sandbox = await AsyncSandbox.create(
                template=template,
                timeout=lifetime,
                metadata=openma_labels(spec),
                envs=dict(spec.env) or None,
                **network_wall(spec),
                **self._opts,
            )
        sandbox = self._wrap(sdk_sandbox, spec)
        sandbox._alive_until = time.monotonic() + lifetime
        try:
            await sandbox._prepare()
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sandbox.destroy()
            raise
        return sandbox

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> E2BSandbox:
        from e2b import AsyncSandbox

        with _errors("connect", sandbox_id=sandbox_id):
            try:
                sdk_sandbox = await AsyncSandbox.connect(sandbox_id, **self._opts)
            except Exception as exc:
                if isinstance(translate(exc, "connect"), SandboxGone | NotFound):
                    raise NotFound(f"e2b sandbox {sandbox_id} does not exist", sandbox_id=sandbox_id) from exc
                raise
            info = await sdk_sandbox.get_info()
        sandbox = self._wrap(sdk_sandbox, spec)
        end_at = getattr(info, "end_at", None)
        if isinstance(end_at, datetime):
            left = (end_at - datetime.now(end_at.tzinfo)).total_seconds()
            sandbox._alive_until = time.monotonic() + max(left, 0.0)
        return sandbox

    async def list_labeled(self, labels: Mapping[str, str]) -> list[tuple[str, datetime | None]]:
        from e2b import AsyncSandbox, SandboxQuery

        found: list[tuple[str, datetime | None]] = []
        with _errors("list sandboxes"):
            paginator = AsyncSandbox.list(query=SandboxQuery(metadata=dict(labels)), **self._opts)
            while paginator.has_next:
                for info in await paginator.next_items():
                    started = getattr(info, "started_at", None)
                    found.append((info.sandbox_id, started if isinstance(started, datetime) else None))
        return found

    async def destroy_id(self, sandbox_id: str) -> None:
        from e2b import AsyncSandbox

        with _errors("kill", sandbox_id=sandbox_id):
            await AsyncSandbox.kill(sandbox_id, **self._opts)

    async def aclose(self) -> None:
        return None


async def open_sandbox_provider(settings: Settings, *, blobs: BlobStore | None = None) -> E2BProvider:
    """The registry's factory for ``e2b``."""
    _import_sdk()
    require_asyncio("e2b")
    if not settings.e2b_api_key:
        raise ConfigError("the e2b sandbox needs an API key: set E2B_API_KEY (settings.e2b_api_key)")
    return E2BProvider(settings, blobs=blobs)
