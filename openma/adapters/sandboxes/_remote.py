"""What the E2B and Daytona sandboxes share: the port's semantics on top of a few provider primitives.

A provider adapter subclasses :class:`RemoteSandbox` and implements the primitives (run a bash script,
read/write/list/stat files, extend the lifetime, kill the sandbox), translating its SDK's errors. Everything
else (command deadlines that kill the process tree, background processes, command-scoped secrets and
masking, output caps, path handling, snapshots through the BlobStore, destroy-once) lives here once, so the
two adapters cannot drift apart.
"""

from __future__ import annotations

import abc
import math
import posixpath
import re
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import ClassVar, Final

import anyio
import attrs

from openma.adapters.sandboxes import _shell
from openma.core import keys
from openma.core.sweeper import LABEL
from openma.core.workspace import SNAPSHOT_TTL, mask_secrets, restore_workspace, snapshot_workspace
from openma.errors import InvalidInput, NotFound, SandboxError, SandboxGone
from openma.ports.blobs import BlobStore
from openma.ports.sandbox import ExecResult, FileInfo, ProcessInfo, SandboxSpec, SnapshotRef, is_oom_kill

#: Labels naming the tenant and the session (next to the sweeper's ``openma=1``).
LABEL_TENANT: Final = "openma-tenant"
LABEL_SESSION: Final = "openma-session"

#: Bytes of stdout (and of stderr) kept per command; the rest is cut and ``truncated=True``.
DEFAULT_MAX_OUTPUT: Final = 1 << 20
#: Seconds the start/status/kill scripts may take.
CONTROL_TIMEOUT: Final = 30.0
DEFAULT_STATE_DIR: Final = "/tmp/.openma"

_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def openma_labels(spec: SandboxSpec) -> dict[str, str]:
    """The labels every sandbox of ``spec`` gets: the caller's, then openma's own (which win)."""
    labels = {str(k): str(v) for k, v in spec.labels.items()}
    labels.update({LABEL: "1", LABEL_TENANT: spec.tenant_id, LABEL_SESSION: spec.session_id})
    return labels


@attrs.frozen
class ShellResult:
    """What a provider primitive returns for one script."""

    exit_code: int
    stdout: str
    stderr: str
    #: The provider's or the adapter's own deadline fired before the script ended.
    expired: bool = False


@attrs.frozen
class Entry:
    """A directory entry as a provider lists it (absolute path)."""

    path: str
    is_dir: bool
    size: int
    modified_at: datetime | None = None


def cap(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), and whether it was cut."""
    if len(text) <= limit // 4:
        return text, False
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode("utf-8", "ignore"), True


class RemoteSandbox(abc.ABC):
    """A provider sandbox driven through bash scripts and the provider's file API. See the port's contract."""

    provider: ClassVar[str]
    capabilities: frozenset[str]
    #: The provider merges a command's stderr into its stdout: the script sends stderr back separately.
    merged_output: ClassVar[bool] = False

    def __init__(
        self,
        *,
        sandbox_id: str,
        spec: SandboxSpec,
        blobs: BlobStore | None,
        workdir: str,
        state_dir: str,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self._id = sandbox_id
        self._spec = spec
        self._blobs = blobs
        self.workdir = workdir
        self._state_dir = state_dir
        self._max_output = max_output
        self._secrets: dict[str, str] = {}
        self._mask_values: set[str] = set()
        self._commands: dict[str, str] = {}
        self._destroyed = False
        self._egress_ca_written = False
        # Where the sandbox's kernel counts memory kills (``oom_counters`` in the environment's sandbox options).
        counters = spec.options.get("oom_counters", _shell.OOM_COUNTERS)
        if not isinstance(counters, list | tuple) or not all(
            isinstance(c, str) and c.startswith("/") for c in counters
        ):
            raise InvalidInput("sandbox option oom_counters must be a list of absolute paths", field="oom_counters")
        self._oom_counters: tuple[str, ...] = tuple(counters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id!r}, workdir={self.workdir!r})"

    @property
    def id(self) -> str:
        return self._id

    # -- provider primitives ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _shell(self, script: str, *, timeout: float, env: Mapping[str, str]) -> ShellResult:
        """Run ``script`` with ``bash -l -c``. ``timeout`` is when the script itself gives up; the provider
        gets a slightly later deadline and the adapter a later one still (``expired=True``)."""

    @abc.abstractmethod
    async def _read(self, path: str) -> bytes:
        """Bytes of an absolute path; ``NotFound`` when missing."""

    async def _read_many(self, paths: Sequence[str]) -> list[bytes]:
        return [await self._read(p) for p in paths]

    @abc.abstractmethod
    async def _write(self, path: str, data: bytes) -> None:
        """Write (creating parent directories)."""

    @abc.abstractmethod
    async def _list(self, path: str) -> list[Entry]:
        """The direct children of a directory; ``NotFound`` when missing."""

    @abc.abstractmethod
    async def _exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    async def _extend(self, seconds: float) -> None:
        """Keep the sandbox alive for at least ``seconds`` more."""

    @abc.abstractmethod
    async def _kill_sandbox(self) -> None:
        """Free the provider's sandbox; a sandbox that is already gone is not an error."""

    # -- helpers ----------------------------------------------------------------------------------------------

    def _alive(self) -> None:
        if self._destroyed:
            raise SandboxGone(f"{self.provider} sandbox {self._id} was destroyed", sandbox_id=self._id)

    def _path(self, path: str) -> str:
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidInput(f"invalid path {path!r}")
        joined = path if path.startswith("/") else posixpath.join(self.workdir, path)
        return posixpath.normpath(joined)

    def _relative(self, path: str) -> str:
        if path == self.workdir:
            return "."
        if path.startswith(self.workdir.rstrip("/") + "/"):
            return posixpath.relpath(path, self.workdir)
        return path

    def _masked(self, text: str, *, cut: bool = False) -> str:
        return mask_secrets(text, self._mask_values, cut=cut) if self._mask_values else text

    def _output(self, text: str) -> tuple[str, bool]:
        """``text`` capped, then masked (a secret cut in half by the cap is masked too)."""
        text, cut = cap(text, self._max_output)
        return self._masked(text, cut=cut), cut

    def _command_env(self, env: Mapping[str, str] | None, secrets: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise InvalidInput(f"invalid environment variable name {key!r}")
            if not isinstance(value, str) or "\x00" in value:
                raise InvalidInput(f"environment variable {key} must be a string without NUL")
            out[key] = value
        if isinstance(secrets, str):
            raise InvalidInput("secrets must be a list of secret names, not a string")
        for name in secrets:
            if name not in self._secrets:
                raise InvalidInput(f"unknown secret {name!r}; register it with set_secrets first", secret=name)
            out[name] = self._secrets[name]
        if self._spec.egress is not None:  # last: a caller cannot route around the proxy
            out.update(self._spec.egress.env(ca_file=self.egress_ca_file))
        return out

    @property
    def egress_ca_file(self) -> str:
        """Where the egress CA certificate is written: the state directory, outside the workspace."""
        return f"{self._state_dir}/egress-ca.pem"

    async def _ensure_egress_ca(self) -> None:
        """Write ``spec.egress``'s CA before this object's first command, and add it to the system bundle where
        the image lets us (best effort: without root, the ``SSL_CERT_FILE`` family of variables still holds)."""
        if self._spec.egress is None or self._egress_ca_written:
            return
        await self._write(self.egress_ca_file, self._spec.egress.ca_pem.encode("ascii"))
        target = "/usr/local/share/ca-certificates/openma-egress.crt"
        script = f"(cp {_shell.q(self.egress_ca_file)} {target} && update-ca-certificates) >/dev/null 2>&1; true"
        await self._shell(script, timeout=CONTROL_TIMEOUT, env={})
        self._egress_ca_written = True

    @staticmethod
    def _timeout(timeout: float) -> float:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout):
            raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
        if timeout <= 0:
            raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
        return float(timeout)

    def _proc_dir(self, process_id: str) -> str:
        if not isinstance(process_id, str) or not _shell.valid_process_id(process_id):
            raise NotFound(f"no background process {process_id!r}", process_id=process_id)
        return f"{self._state_dir}/p/{process_id}"

    # -- commands ---------------------------------------------------------------------------------------------

    async def exec(
        self,
        cmd: str,
        *,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ExecResult:
        self._alive()
        if not isinstance(cmd, str):
            raise InvalidInput("cmd must be a string")
        timeout = self._timeout(timeout)
        command_env = self._command_env(env, secrets)
        await self._ensure_egress_ca()
        workdir = self._path(cwd) if cwd is not None else self.workdir
        token = _shell.new_token()
        run_dir = f"{self._state_dir}/run"
        stderr_limit = self._max_output + 1 if self.merged_output else None
        script = _shell.exec_script(
            cmd,
            cwd=workdir,
            timeout=timeout,
            token=token,
            run_dir=run_dir,
            stderr_limit=stderr_limit,
            oom_counters=self._oom_counters,
        )
        started = time.monotonic()
        raw = await self._shell(script, timeout=timeout, env=command_env)
        duration = time.monotonic() - started
        out, err = raw.stdout, raw.stderr
        if self.merged_output:
            out, split = _shell.split_stderr(out, token)
            err = split + err
        stdout, found_out = _shell.strip_marker(out, token)
        stderr, found_err = _shell.strip_marker(err, token)
        found = found_out | found_err
        if "nocwd" in found:
            raise NotFound(f"working directory {cwd!r} does not exist", path=cwd)
        timed_out = "timeout" in found or raw.expired
        if raw.expired:
            await self._reap(token)
        stdout, cut_out = self._output(stdout)
        stderr, cut_err = self._output(stderr)
        exit_code = _shell.TIMEOUT_EXIT if timed_out else raw.exit_code
        return ExecResult(
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            timed_out=timed_out,
            truncated=cut_out or cut_err,
            duration=duration,
            oom_killed=is_oom_kill(exit_code, timed_out=timed_out, memory_kill_seen="oom" in found),
        )

    async def _reap(self, token: str) -> None:
        """The deadline fired outside the sandbox: kill what the command started, as far as we still can."""
        try:
            with anyio.move_on_after(_shell.GRACE * 2):
                await self._shell(_shell.reap_script(token=token), timeout=_shell.GRACE, env={})
        except SandboxError:
            pass

    async def _control(self, script: str, process_id: str) -> ShellResult:
        raw = await self._shell(script, timeout=CONTROL_TIMEOUT, env={})
        if raw.exit_code == _shell.MISSING_EXIT:
            raise NotFound(f"no background process {process_id!r}", process_id=process_id)
        if raw.exit_code != 0 or raw.expired:
            raise SandboxError(
                f"{self.provider} sandbox {self._id}: process control failed (exit {raw.exit_code})",
                process_id=process_id,
            )
        return raw

    async def start(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ProcessInfo:
        self._alive()
        if not isinstance(cmd, str):
            raise InvalidInput("cmd must be a string")
        command_env = self._command_env(env, secrets)
        await self._ensure_egress_ca()
        workdir = self._path(cwd) if cwd is not None else self.workdir
        process_id = _secrets.token_hex(8)
        token = _shell.new_token()
        script = _shell.start_script(cmd, cwd=workdir, proc_dir=self._proc_dir(process_id), token=token)
        raw = await self._shell(script, timeout=CONTROL_TIMEOUT, env=command_env)
        _, found = _shell.strip_marker(raw.stdout + raw.stderr, token)
        if "nocwd" in found:
            raise NotFound(f"working directory {cwd!r} does not exist", path=cwd)
        if raw.exit_code != 0 or raw.expired:
            raise SandboxError(f"{self.provider} sandbox {self._id}: could not start {self._masked(cmd)!r}")
        self._commands[process_id] = cmd
        return ProcessInfo(id=process_id, command=self._masked(cmd), status="running")

    async def process(self, process_id: str) -> ProcessInfo:
        self._alive()
        raw = await self._control(_shell.status_script(self._proc_dir(process_id)), process_id)
        state, exit_code, killed, command = _shell.parse_status(raw.stdout)
        command = self._commands.get(process_id, command)
        if killed and state == "exited":
            return ProcessInfo(id=process_id, command=self._masked(command), status="killed", exit_code=exit_code)
        if state == "exited":
            return ProcessInfo(id=process_id, command=self._masked(command), status="exited", exit_code=exit_code)
        return ProcessInfo(id=process_id, command=self._masked(command), status="running")

    async def logs(self, process_id: str) -> tuple[str, str]:
        self._alive()
        d = self._proc_dir(process_id)
        try:
            out, err = await self._read_many([f"{d}/out", f"{d}/err"])
        except NotFound:
            raise NotFound(f"no background process {process_id!r}", process_id=process_id) from None
        stdout, _ = self._output(out.decode("utf-8", "replace"))
        stderr, _ = self._output(err.decode("utf-8", "replace"))
        return stdout, stderr

    async def kill(self, process_id: str) -> None:
        self._alive()
        await self._control(_shell.kill_script(self._proc_dir(process_id)), process_id)

    def set_secrets(self, secrets: Mapping[str, str]) -> None:
        for name, value in secrets.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise InvalidInput(f"invalid secret name {name!r}")
            if not isinstance(value, str):
                raise InvalidInput(f"secret {name} must be a string")
        self._secrets = dict(secrets)
        self._mask_values.update(v for v in secrets.values() if v)

    # -- files ------------------------------------------------------------------------------------------------

    async def read_file(self, path: str) -> bytes:
        self._alive()
        return bytes(await self._read(self._path(path)))

    async def write_file(self, path: str, data: bytes) -> None:
        self._alive()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput(f"write_file takes bytes, got {type(data).__name__}")
        await self._write(self._path(path), bytes(data))

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        self._alive()
        entries = await self._list(self._path(path))
        infos = [FileInfo(self._relative(e.path), e.is_dir, e.size, e.modified_at) for e in entries]
        return sorted(infos, key=lambda f: f.path)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        self._alive()
        target = self._path(path)
        if target in ("/", self.workdir):
            raise InvalidInput(f"refusing to remove {path!r}")
        flag = "-rf" if recursive else "-f"
        script = (
            f'p={_shell.q(target)}; {{ [ -e "$p" ] || [ -L "$p" ]; }} || exit {_shell.MISSING_EXIT}; '
            f'if [ -d "$p" ] && [ ! -L "$p" ] && [ {int(recursive)} = 0 ]; then exit 4; fi; '
            f'rm {flag} -- "$p"'
        )
        raw = await self._shell(script, timeout=CONTROL_TIMEOUT, env={})
        if raw.exit_code == _shell.MISSING_EXIT:
            raise NotFound(f"no such file or directory: {path!r}", path=path)
        if raw.exit_code == 4:
            raise InvalidInput(f"{path!r} is a directory; pass recursive=True", path=path)
        if raw.exit_code != 0:
            raise SandboxError(f"could not remove {path!r}: {raw.stderr.strip()}", path=path)

    async def exists(self, path: str) -> bool:
        self._alive()
        return await self._exists(self._path(path))

    # -- snapshots, lifetime --------------------------------------------------------------------------------

    @property
    def snapshot_prefix(self) -> str:
        """Where this sandbox's snapshots go in the BlobStore: the tenant's internal area (the same layout as
        the local sandbox; see :mod:`openma.core.keys`)."""
        return keys.snapshot_root_prefix(self._spec.tenant_id, self._spec.session_id)

    def _need_blobs(self) -> BlobStore:
        if self._blobs is None:
            raise SandboxError(f"{self.provider} sandbox {self._id} has no BlobStore for snapshots")
        return self._blobs

    async def snapshot(self, *, ttl: float | None = SNAPSHOT_TTL) -> SnapshotRef:
        self._alive()
        key = keys.new_snapshot_key(self._spec.tenant_id, self._spec.session_id)
        return await snapshot_workspace(self, self._need_blobs(), key=key, ttl=ttl)

    async def restore(self, ref: SnapshotRef) -> None:
        self._alive()
        if not keys.tenant_owns_snapshot(self._spec.tenant_id, ref.key):
            raise InvalidInput("snapshot belongs to another tenant", key=ref.key)
        await restore_workspace(self, self._need_blobs(), ref)

    async def keepalive(self, seconds: float) -> None:
        self._alive()
        await self._extend(self._timeout(seconds))

    async def destroy(self) -> None:
        if self._destroyed:
            return
        try:
            await self._kill_sandbox()
        except SandboxGone:
            pass
        self._destroyed = True

    @property
    def spec(self) -> SandboxSpec:
        return self._spec
