"""``LocalSandbox``: one session's sandbox on this host (see :mod:`openma.adapters.sandboxes.local` for what
it does and does not protect)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from secrets import token_hex as secrets_token

import anyio

from openma.adapters.sandboxes import _localfs as fs
from openma.adapters.sandboxes._config import DEFAULT_PATH, MARKER, NEVER_PASS, LocalSandboxConfig
from openma.adapters.sandboxes._confine import check_cmd, check_env, check_timeout, resolve, workdir
from openma.adapters.sandboxes._limits import Launcher
from openma.adapters.sandboxes._proctree import RunMarker, exit_code, stop
from openma.adapters.sandboxes._run import Run, spawn, spawn_detached
from openma.core import keys
from openma.core.workspace import SNAPSHOT_TTL, mask_secrets, restore_workspace, snapshot_workspace
from openma.errors import InvalidInput, NotFound, SandboxError, SandboxGone
from openma.ports.blobs import BlobStore
from openma.ports.egress import EgressEndpoint
from openma.ports.sandbox import (
    OOM_EXIT,
    ExecResult,
    FileInfo,
    ProcessInfo,
    ProcessStatus,
    SandboxSpec,
    SnapshotRef,
    is_oom_kill,
)


class LocalSandbox:
    """One session's sandbox on this host: ``<dir>/workspace`` (the workspace, ``HOME``, the default cwd),
    ``<dir>/tmp`` (``TMPDIR``) and ``<dir>/meta.json``."""

    def __init__(
        self,
        sandbox_id: str,
        directory: str,
        spec: SandboxSpec,
        config: LocalSandboxConfig,
        launch: Launcher,
        blobs: BlobStore | None,
        *,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        self._id = sandbox_id
        self._dir = directory
        self._ws = os.path.join(directory, "workspace")
        self._tmp = os.path.join(directory, "tmp")
        #: The egress proxy's CA certificate (``spec.egress``), outside the workspace.
        self._ca_file = os.path.join(directory, "egress", "ca.pem")
        self._ca_written: str | None = None
        self.spec = spec
        self._cfg = config
        self._launch = launch
        self._blobs = blobs
        self._on_close = on_close
        self._secrets: dict[str, str] = {}
        #: Every value ever registered, so a replaced secret is still masked.
        self._mask: set[str] = set()
        self._procs: dict[str, Run] = {}
        self._runs: dict[str, int] = {}
        self._counter = 0
        self._closed = False
        self.deadline = time.monotonic() + spec.lifetime
        self.last_used = time.monotonic()
        caps = {"background", "separate_stderr", "secrets", "keepalive", "path_confinement"}
        if blobs is not None:
            caps.add("snapshot")
        if config.limits.any:
            caps.add("resource_limits")
        if config.limits.memory_bytes:
            caps.add("oom_detection")
        self._caps = frozenset(caps)

    def __repr__(self) -> str:
        state = "destroyed" if self._closed else "open"
        return f"LocalSandbox({self._id!r}, {state}, workspace={self._ws!r})"

    @property
    def id(self) -> str:
        return self._id

    @property
    def capabilities(self) -> frozenset[str]:
        return self._caps

    @property
    def workspace(self) -> str:
        """The workspace directory on the host."""
        return self._ws

    @property
    def closed(self) -> bool:
        return self._closed

    def _ensure_open(self) -> None:
        if self._closed:
            raise SandboxGone(f"sandbox {self._id} is destroyed", sandbox_id=self._id)
        if not os.path.isdir(self._ws):  # removed from outside: as gone as a remote sandbox that was killed
            raise SandboxGone(f"sandbox {self._id} no longer exists (its workspace was removed)", sandbox_id=self._id)
        self.last_used = time.monotonic()

    def _marker(self, run: str | None = None) -> RunMarker:
        """The marker of one run, or (``run=None``) of every run of this sandbox."""
        return RunMarker(f"{self._id}.{run if run is not None else ''}", exact=run is not None)

    def _next_run(self) -> str:
        self._counter += 1
        return str(self._counter)

    # -- commands

    def _env(self, run: str, extra: Mapping[str, str] | None, secrets: Sequence[str], cwd: str) -> dict[str, str]:
        if isinstance(secrets, str):
            raise InvalidInput("secrets must be a list of names, not a string", field="secrets")
        env = {k: os.environ[k] for k in self._cfg.pass_env if k in os.environ and k not in NEVER_PASS}
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("LANG", "C.UTF-8")
        env.update(HOME=self._ws, TMPDIR=self._tmp, PWD=cwd)
        env.update(self.spec.env)
        if extra:
            check_env(extra, "env")
            env.update(extra)
        for name in secrets:
            if name not in self._secrets:
                raise InvalidInput(f"secret {name!r} is not registered; set_secrets() it first", secret=name)
            env[name] = self._secrets[name]
        if self.spec.egress is not None:  # last: neither the environment nor a caller can route around it
            env.update(self._egress_env(self.spec.egress))
        env[MARKER] = f"{self._id}.{run}"
        return env

    def _egress_env(self, endpoint: EgressEndpoint) -> dict[str, str]:
        """The proxy's variables as this sandbox's commands see them (here: the proxy's own address)."""
        return endpoint.env(ca_file=self._ca_file)

    def _write_ca(self) -> None:
        """The egress CA certificate, beside the workspace (never in a snapshot), readable by the commands."""
        egress = self.spec.egress
        if egress is None or self._ca_written == egress.ca_pem:
            return
        os.makedirs(os.path.dirname(self._ca_file), exist_ok=True)
        # a partial file per writer: commands started together may both write it (same bytes; replace is atomic)
        partial = f"{self._ca_file}.{secrets_token()}.partial"
        with open(partial, "w", encoding="ascii") as out:
            out.write(egress.ca_pem)
        os.replace(partial, self._ca_file)
        self._ca_written = egress.ca_pem

    async def _start(
        self, cmd: str, env: Mapping[str, str] | None, cwd: str | None, secrets: Sequence[str]
    ) -> tuple[str, Run]:
        self._ensure_open()
        check_cmd(cmd)
        where = workdir(self._ws, cwd)
        run = self._next_run()
        env_map = self._env(run, env, secrets, where)
        if self.spec.egress is not None and self._ca_written != self.spec.egress.ca_pem:
            try:
                await anyio.to_thread.run_sync(self._write_ca)
            except OSError as exc:
                raise SandboxError(f"cannot write the egress CA of sandbox {self._id}: {exc}") from exc
        try:
            proc = await spawn(self._launch.argv(cmd), where, env_map)
        except OSError as exc:
            raise SandboxError(f"cannot start a command in sandbox {self._id}: {exc}", sandbox_id=self._id) from exc
        cfg = self._cfg
        return run, Run(
            proc,
            cmd,
            self._marker(run),
            cap=cfg.output_bytes,
            memory=cfg.limits.memory_bytes if "oom_detection" in self._caps else 0,
            grace=cfg.kill_grace,
        )

    async def exec(
        self,
        cmd: str,
        *,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ExecResult:
        self._ensure_open()
        check_cmd(cmd)
        timeout = check_timeout(timeout)
        started = time.monotonic()
        run, proc = await self._start(cmd, env, cwd, secrets)
        self._runs[run] = proc.pid
        try:
            await proc.supervise(timeout=timeout, linger=self._cfg.linger)
        finally:
            self._runs.pop(run, None)
        if self._closed:
            raise SandboxError(f"sandbox {self._id} was destroyed while the command ran", sandbox_id=self._id)
        assert proc.returncode is not None
        secret_values = sorted(self._mask)
        code = OOM_EXIT if proc.oom else exit_code(proc.returncode)
        return ExecResult(
            exit_code=code,
            stdout=proc.out.text(secret_values),
            stderr=proc.err.text(secret_values),
            timed_out=proc.timed_out,
            truncated=proc.out.truncated or proc.err.truncated,
            duration=time.monotonic() - started,
            oom_killed=is_oom_kill(code, timed_out=proc.timed_out, memory_kill_seen=proc.oom),
        )

    # -- background processes

    async def start(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ProcessInfo:
        run, proc = await self._start(cmd, env, cwd, secrets)
        pid = f"prc_{self._id[4:]}_{run}"
        self._procs[pid] = proc
        spawn_detached(proc.supervise)
        return self._info(pid, proc)

    def _info(self, pid: str, proc: Run) -> ProcessInfo:
        command = mask_secrets(proc.command, sorted(self._mask))
        rc = proc.returncode
        if rc is None:
            return ProcessInfo(id=pid, command=command, status="running")
        status: ProcessStatus = "killed" if (proc.killed or proc.oom) else "exited"
        return ProcessInfo(id=pid, command=command, status=status, exit_code=OOM_EXIT if proc.oom else exit_code(rc))

    def _proc(self, process_id: str) -> Run:
        self._ensure_open()
        try:
            return self._procs[process_id]
        except (KeyError, TypeError):
            raise NotFound(f"no process {process_id!r} in sandbox {self._id}", process_id=process_id) from None

    async def process(self, process_id: str) -> ProcessInfo:
        proc = self._proc(process_id)
        await proc.settle()
        return self._info(process_id, proc)

    async def logs(self, process_id: str) -> tuple[str, str]:
        """What it printed so far; once it has exited, everything it printed (unless a child holds on)."""
        proc = self._proc(process_id)
        await proc.settle()
        secret_values = sorted(self._mask)
        return proc.out.text(secret_values), proc.err.text(secret_values)

    async def kill(self, process_id: str) -> None:
        await self._proc(process_id).kill()

    # -- secrets

    def set_secrets(self, secrets: Mapping[str, str]) -> None:
        """Register (or replace) secrets by name; a value once registered stays masked."""
        if self._closed:
            raise SandboxError(f"sandbox {self._id} is destroyed", sandbox_id=self._id)
        check_env(secrets, "secrets")
        self._secrets.update(secrets)
        self._mask.update(v for v in secrets.values() if v)

    # -- files

    async def read_file(self, path: str) -> bytes:
        self._ensure_open()
        real = resolve(self._ws, path)
        return await fs.run(path, lambda: fs.read_regular(real, path))

    async def write_file(self, path: str, data: bytes) -> None:
        self._ensure_open()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput(f"file data must be bytes, got {type(data).__name__}", field="data")
        real = resolve(self._ws, path)
        if real == self._ws:
            raise InvalidInput("cannot write the workspace root", path=path)
        await fs.run(path, lambda: fs.write_regular(real, data, path))

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        self._ensure_open()
        real = resolve(self._ws, path)
        return await fs.run(path, lambda: fs.listing(real, path))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        self._ensure_open()
        real = resolve(self._ws, path, follow=False)
        if real == self._ws:
            raise InvalidInput("cannot remove the workspace root", path=path)
        await fs.run(path, lambda: fs.remove(real, path, recursive=recursive))

    async def exists(self, path: str) -> bool:
        self._ensure_open()
        real = resolve(self._ws, path, follow=False)
        return await anyio.to_thread.run_sync(os.path.lexists, real)

    # -- snapshots

    def _require_blobs(self) -> BlobStore:
        self._ensure_open()
        if self._blobs is None:
            raise SandboxError("this sandbox has no blob store for snapshots", sandbox_id=self._id)
        return self._blobs

    @property
    def snapshot_prefix(self) -> str:
        return keys.snapshot_root_prefix(self.spec.tenant_id, self.spec.session_id)

    async def snapshot(self, *, ttl: float | None = SNAPSHOT_TTL) -> SnapshotRef:
        blobs = self._require_blobs()
        key = keys.new_snapshot_key(self.spec.tenant_id, self.spec.session_id)
        return await snapshot_workspace(self, blobs, key=key, ttl=ttl)

    async def restore(self, ref: SnapshotRef) -> None:
        blobs = self._require_blobs()
        if not keys.tenant_owns_snapshot(self.spec.tenant_id, ref.key):
            raise InvalidInput("snapshot belongs to another tenant", key=ref.key)
        await restore_workspace(self, blobs, ref)

    # -- lifetime

    async def keepalive(self, seconds: float) -> None:
        self._ensure_open()
        check_timeout(seconds)
        self.deadline = max(self.deadline, time.monotonic() + seconds)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    async def destroy(self) -> None:
        """Stop every process it started and delete its directory. Idempotent."""
        await self.close(remove=True)

    async def close(self, *, remove: bool = False) -> None:
        """Stop every process; with ``remove``, delete the directory too. Later calls raise ``SandboxError``."""
        first = not self._closed
        self._closed = True
        if first:
            pgids = [*self._runs.values(), *(proc.pid for proc in self._procs.values())]
            with anyio.CancelScope(shield=True):
                await stop(pgids, self._marker(), self._cfg.kill_grace)
                for proc in self._procs.values():
                    proc.killed = proc.killed or proc.returncode is None
                    await proc.proc.wait()
            if self._on_close is not None:
                self._on_close(self._id)
        if remove:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._dir, ignore_errors=True))


__all__ = ["LocalSandbox"]
