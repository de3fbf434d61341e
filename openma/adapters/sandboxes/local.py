"""LocalSubprocess: each sandbox is a directory on this host and its commands are child processes.

It isolates **nothing** from a hostile agent: commands run as the host's user, on the host's kernel, with
the host's network and filesystem (``cat ~/.ssh/id_rsa`` works). What it does is keep honest code from
hurting the host by accident:

* **Paths.** The file API is confined to the workspace: ``..``, absolute paths and symlinks resolving
  outside it are :class:`~openma.errors.InvalidInput` (checked with ``realpath``; not race-free against a
  command swapping symlinks at the same moment, which a hostile command has no need for anyway).
* **Special files.** ``read_file`` and ``write_file`` take regular files only: a FIFO, socket, device or
  directory is :class:`~openma.errors.InvalidInput` at once (opening a FIFO would block a worker thread that
  no cancel scope reaches); ``list_files`` lists directories only. They are still listed, tested with
  ``exists`` and removed like any entry.
* **Environment.** Commands get an allowlisted environment (``PATH``, ``LANG``, ``LC_*``, ``TZ`` from the
  host, ``HOME`` = the workspace, ``TMPDIR`` = the sandbox's own tmp), never the host's variables:
  ``OPENMA_ROOT_SECRET``, cloud keys and the rest stay out.
* **Runaway processes.** Every command starts in a new session (``setsid``); a timeout stops its whole
  process group (SIGTERM, then SIGKILL after a grace), plus any process of the run that left the group,
  found by the ``OPENMA_SANDBOX_RUN`` marker in its environment. Output is read as it comes and capped.
* **Resources.** Per-process limits (data segment, CPU seconds, open files, processes per user) are set
  with the shell's ``ulimit`` in front of the command (dash or bash; else ``prlimit``, else a tiny Python
  launcher), and a watchdog samples the resident memory of the command's processes together: past the
  memory limit it kills them all and reports exit 137 with ``oom_killed=True``.

Layout: ``<root>/<sandbox id>/workspace`` (the workspace, ``HOME`` and the default cwd), ``.../tmp``
(``TMPDIR``) and ``.../meta.json`` (tenant, session, labels, creation time).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import posixpath
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final, TypeVar

import anyio
import attrs
from anyio.abc import ByteReceiveStream, Process

from openma.adapters.sandboxes._localfs import read_regular, require_directory, write_regular
from openma.core import keys
from openma.core.ids import new_id
from openma.core.workspace import SNAPSHOT_TTL, mask_secrets, restore_workspace, snapshot_workspace
from openma.errors import ConfigError, InvalidInput, NotFound, SandboxError, SandboxGone
from openma.ports.blobs import BlobStore
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
from openma.settings import Settings

SHELL: Final = "/bin/sh"
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Host variables a command may see (their values are copied when the host has them).
DEFAULT_PASS_ENV: Final = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
#: Never passed through, whatever the allowlist says.
NEVER_PASS: Final = frozenset({"OPENMA_ROOT_SECRET"})
MARKER: Final = "OPENMA_SANDBOX_RUN"
#: Seconds between two samples of a command's resident memory.
WATCH_INTERVAL: Final = 0.1
#: Seconds ``process``/``logs`` wait for a finished process's last output to be read.
SETTLE: Final = 0.5
_CHUNK: Final = 65536
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SANDBOX_ID: Final = re.compile(r"sbx_[0-9a-z]{26}")
_PROC: Final = "/proc"
_T = TypeVar("_T")


@attrs.frozen
class LocalLimits:
    """Per-command resource limits; 0 turns one off."""

    #: Resident memory of one command's processes together (bytes); each process's data segment is also
    #: capped at twice this, so a single huge allocation fails inside the program instead of on the host.
    memory_bytes: int = 2 << 30
    #: CPU seconds per process (SIGXCPU at the limit, SIGKILL a second later).
    cpu_seconds: int = 3600
    #: Open file descriptors per process.
    open_files: int = 1024
    #: Processes of the host user (RLIMIT_NPROC counts them all; root is exempt).
    processes: int = 4096

    @property
    def any(self) -> bool:
        return any((self.memory_bytes, self.cpu_seconds, self.open_files, self.processes))


@attrs.frozen
class LocalSandboxConfig:
    root: str
    #: Bytes kept of each of stdout and stderr (of an exec, or of a background process's logs).
    output_bytes: int = 1 << 20
    limits: LocalLimits = LocalLimits()
    #: Seconds between SIGTERM and SIGKILL when stopping a command.
    kill_grace: float = 2.0
    pass_env: tuple[str, ...] = DEFAULT_PASS_ENV
    #: Seconds an exec waits, after its shell exited, for processes it left behind to release its output.
    linger: float = 0.1


# -- processes -----------------------------------------------------------------------------------------


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _proc_stat(pid: str) -> tuple[bytes, int, int, int] | None:
    """``(state, pgrp, session, rss pages)`` of a process, from ``/proc/<pid>/stat``."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0], int(fields[2]), int(fields[3]), int(fields[21])
    except (IndexError, ValueError):
        return None


def _pids() -> list[str]:
    try:
        return [p for p in os.listdir(_PROC) if p.isdigit()]
    except OSError:
        return []


_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _group_rss(leader: int) -> int:
    """Resident bytes of every process in ``leader``'s process group or session."""
    total = 0
    for pid in _pids():
        st = _proc_stat(pid)
        if st is not None and leader in (st[1], st[2]):
            total += st[3]
    return total * _PAGE


def _marked(marker: bytes) -> list[int]:
    """Pids whose environment carries ``marker`` (``OPENMA_SANDBOX_RUN=<run or sandbox prefix>``)."""
    out = []
    me = os.getpid()
    for pid in _pids():
        if int(pid) == me:
            continue
        try:
            with open(f"{_PROC}/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if env.startswith(marker) or b"\0" + marker in env:
            out.append(int(pid))
    return out


def _signal_all(pgids: Sequence[int], marker: bytes | None, sig: int) -> int:
    """Send ``sig`` to the process groups and to every marked process; how many marked ones were found."""
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    found = _marked(marker) if marker is not None and os.path.isdir(_PROC) else []
    for pid in found:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return len(found)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in the group.

    Orphans are reparented to PID 1, and not every PID 1 reaps (a container whose PID 1 is the app), so a
    zombie must not count as alive.
    """
    if not os.path.isdir(_PROC):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for pid in _pids():
        st = _proc_stat(pid)
        if st is not None and st[1] == pgid and st[0] not in (b"Z", b"X"):
            return True
    return False


async def _stop(
    pgids: Sequence[int],
    marker: bytes | None,
    grace: float,
    *,
    first: int = signal.SIGTERM,
    reap: Callable[[], object] | None = None,
) -> None:
    """Signal the groups and marked processes with ``first``; SIGKILL whatever is left after ``grace``.

    ``reap`` collects the leader when nobody else does (a ``Popen``), so its zombie does not look alive.
    """
    await anyio.to_thread.run_sync(_signal_all, pgids, marker, first)
    if first != signal.SIGKILL:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            await anyio.sleep(0.02)
            if reap is not None:
                reap()
            if not await anyio.to_thread.run_sync(_survivors, pgids, marker):
                return
    await anyio.to_thread.run_sync(_signal_all, pgids, marker, signal.SIGKILL)


def _survivors(pgids: Sequence[int], marker: bytes | None) -> bool:
    return any(_group_alive(g) for g in pgids) or (marker is not None and bool(_marked(marker)))


class _Capture:
    """The first ``cap`` bytes of a stream; what comes after is counted and dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True

    def text(self, secrets: Sequence[str]) -> str:
        # A cut may split a UTF-8 sequence: an unfinished decode drops the broken tail instead of a U+FFFD.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(bytes(self.data), final=not self.truncated)
        return mask_secrets(text, secrets, cut=self.truncated)


async def _pump(stream: ByteReceiveStream | None, into: _Capture) -> None:
    if stream is None:
        return
    try:
        async for chunk in stream:
            into.feed(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return


def _rlimits(limits: LocalLimits) -> list[tuple[int, int, int]]:
    """``(resource, soft, hard)`` triples, never above the host's own hard limits (children inherit them)."""

    def clip(res: int, value: int) -> int:
        hard = resource.getrlimit(res)[1]
        return value if hard == resource.RLIM_INFINITY else min(value, hard)

    out = []
    if limits.memory_bytes:
        data = clip(resource.RLIMIT_DATA, 2 * limits.memory_bytes)
        out.append((resource.RLIMIT_DATA, data, data))
    if limits.cpu_seconds:
        hard = clip(resource.RLIMIT_CPU, limits.cpu_seconds + 1)
        out.append((resource.RLIMIT_CPU, min(limits.cpu_seconds, hard), hard))
    if limits.open_files:
        n = clip(resource.RLIMIT_NOFILE, limits.open_files)
        out.append((resource.RLIMIT_NOFILE, n, n))
    if limits.processes and hasattr(resource, "RLIMIT_NPROC"):
        n = clip(resource.RLIMIT_NPROC, limits.processes)
        out.append((resource.RLIMIT_NPROC, n, n))
    return out


_LAUNCHER: Final = (
    "import os,resource,sys\n"
    "for t in sys.argv[1].split(','):\n"
    " r,s,h=map(int,t.split(':'));resource.setrlimit(r,(s,h))\n"
    "os.execv(sys.argv[2],sys.argv[2:])\n"
)


@attrs.frozen
class _Launch:
    """How a command is started with its limits: a shell script prefix, or an argv prefix."""

    prefix_argv: tuple[str, ...] = ()
    prefix_script: str = ""

    def argv(self, cmd: str) -> list[str]:
        return [*self.prefix_argv, SHELL, "-c", self.prefix_script + cmd]


def _launch_for(limits: LocalLimits) -> _Launch:
    triples = _rlimits(limits)
    if not triples:
        return _Launch()
    shell = os.path.basename(os.path.realpath(SHELL))
    nproc_flag = {"dash": "-p", "bash": "-u"}.get(shell)
    if nproc_flag is not None:
        # The shell's own ulimit: no extra exec, so a command costs what `sh -c` costs.
        flags = {resource.RLIMIT_DATA: "-d", resource.RLIMIT_NOFILE: "-n", resource.RLIMIT_CPU: "-t"}
        if hasattr(resource, "RLIMIT_NPROC"):
            flags[resource.RLIMIT_NPROC] = nproc_flag
        parts = []
        for res, soft, hard in triples:
            scale = 1024 if res == resource.RLIMIT_DATA else 1
            flag = flags[res]
            if soft == hard:
                parts.append(f"ulimit {flag} {soft // scale}")
            else:
                parts.append(f"ulimit {flag} {hard // scale}; ulimit -S {flag} {soft // scale}")
        return _Launch(prefix_script="; ".join(parts) + "; ")
    prlimit = shutil.which("prlimit")
    names = {resource.RLIMIT_DATA: "data", resource.RLIMIT_NOFILE: "nofile", resource.RLIMIT_CPU: "cpu"}
    if hasattr(resource, "RLIMIT_NPROC"):
        names[resource.RLIMIT_NPROC] = "nproc"
    if prlimit is not None:
        return _Launch(prefix_argv=(prlimit, *(f"--{names[r]}={s}:{h}" for r, s, h in triples), "--"))
    spec = ",".join(f"{r}:{s}:{h}" for r, s, h in triples)
    return _Launch(prefix_argv=(sys.executable, "-I", "-S", "-c", _LAUNCHER, spec))


# -- background processes --------------------------------------------------------------------------------


class _Background:
    """A process started with ``start``: one daemon thread reads its pipes (capped) and watches its memory."""

    def __init__(self, proc: subprocess.Popen[bytes], command: str, marker: bytes, cap: int, memory: int) -> None:
        self.proc = proc
        self.command = command
        self.marker = marker
        self.out = _Capture(cap)
        self.err = _Capture(cap)
        self.memory = memory
        self.killed = False
        self.oom = False
        self.settled = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"openma-sandbox-{proc.pid}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        streams = {self.proc.stdout: self.out, self.proc.stderr: self.err}
        for stream in streams:
            assert stream is not None
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ)
        next_watch = time.monotonic() + WATCH_INTERVAL
        try:
            while sel.get_map():
                for key, _ in sel.select(WATCH_INTERVAL):
                    try:
                        chunk = os.read(key.fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    with self.lock:
                        streams[key.fileobj].feed(chunk)  # type: ignore[index]
                if self.memory and time.monotonic() >= next_watch and not self.oom:
                    next_watch = time.monotonic() + WATCH_INTERVAL
                    if self.proc.poll() is None and _group_rss(self.proc.pid) > self.memory:
                        self.oom = True
                        _signal_all([self.proc.pid], self.marker, signal.SIGKILL)
        finally:
            sel.close()
            for stream in streams:
                assert stream is not None
                stream.close()

    def settle(self) -> None:
        """Once the leader has exited, give the reader a moment to collect what it printed last."""
        if not self.settled and self.proc.poll() is not None:
            self.thread.join(SETTLE)
            self.settled = True

    def info(self, pid: str, secrets: Sequence[str]) -> ProcessInfo:
        rc = self.proc.poll()
        command = mask_secrets(self.command, secrets)
        if rc is None:
            return ProcessInfo(id=pid, command=command, status="running")
        status: ProcessStatus = "killed" if (self.killed or self.oom) else "exited"
        return ProcessInfo(id=pid, command=command, status=status, exit_code=137 if self.oom else _exit_code(rc))

    def logs(self, secrets: Sequence[str]) -> tuple[str, str]:
        with self.lock:
            return self.out.text(secrets), self.err.text(secrets)


# -- the sandbox -----------------------------------------------------------------------------------------


def _labels(spec: SandboxSpec) -> dict[str, str]:
    return {**spec.labels, "openma": "1", "openma_tenant": spec.tenant_id, "openma_session": spec.session_id}


def _check_env(env: Mapping[str, str], what: str) -> None:
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k):
            raise InvalidInput(f"{what} has an invalid variable name {k!r}", field=what)
        if not isinstance(v, str) or "\0" in v:
            raise InvalidInput(f"{what}[{k!r}] must be a string without NUL bytes", field=what)


def _check_cmd(cmd: object) -> str:
    if not isinstance(cmd, str) or not cmd.strip() or "\0" in cmd:
        raise InvalidInput("cmd must be a non-empty string without NUL bytes", field="cmd")
    return cmd


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout")
    return float(timeout)


class LocalSandbox:
    """One session's sandbox on this host. See the module docstring for what it does and does not protect."""

    def __init__(
        self,
        sandbox_id: str,
        directory: str,
        spec: SandboxSpec,
        config: LocalSandboxConfig,
        launch: _Launch,
        blobs: BlobStore | None,
        *,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        self._id = sandbox_id
        self._dir = directory
        self._ws = os.path.join(directory, "workspace")
        self._tmp = os.path.join(directory, "tmp")
        self.spec = spec
        self._cfg = config
        self._launch = launch
        self._blobs = blobs
        self._on_close = on_close
        self._secrets: dict[str, str] = {}
        #: Every value ever registered, so a replaced secret is still masked.
        self._mask: set[str] = set()
        self._procs: dict[str, _Background] = {}
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
        if config.limits.memory_bytes and os.path.isdir(_PROC):
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

    def _marker(self, run: str | None = None) -> bytes:
        return f"{MARKER}={self._id}.{run if run is not None else ''}".encode() + (b"\0" if run else b"")

    def _next_run(self) -> str:
        self._counter += 1
        return str(self._counter)

    # -- paths

    def _resolve(self, path: str, *, follow: bool = True) -> str:
        if not isinstance(path, str) or not path or "\0" in path:
            raise InvalidInput("path must be a non-empty string without NUL bytes", field="path")
        if path.startswith("/"):
            raise InvalidInput(f"absolute path {path!r} refused: paths are relative to the workspace", path=path)
        norm = posixpath.normpath(path)
        if norm == ".." or norm.startswith("../"):
            raise InvalidInput(f"path {path!r} escapes the workspace", path=path)
        full = os.path.normpath(os.path.join(self._ws, norm))
        if follow:
            real = os.path.realpath(full)
        else:
            real = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
        if real != self._ws and not real.startswith(self._ws + os.sep):
            raise InvalidInput(f"path {path!r} escapes the workspace through a symlink", path=path)
        return real

    # -- exec

    def _env(self, run: str, extra: Mapping[str, str] | None, secrets: Sequence[str], cwd: str) -> dict[str, str]:
        if isinstance(secrets, str):
            raise InvalidInput("secrets must be a list of names, not a string", field="secrets")
        env = {k: os.environ[k] for k in self._cfg.pass_env if k in os.environ and k not in NEVER_PASS}
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("LANG", "C.UTF-8")
        env.update(HOME=self._ws, TMPDIR=self._tmp, PWD=cwd)
        env.update(self.spec.env)
        if extra:
            _check_env(extra, "env")
            env.update(extra)
        for name in secrets:
            if name not in self._secrets:
                raise InvalidInput(f"secret {name!r} is not registered; set_secrets() it first", secret=name)
            env[name] = self._secrets[name]
        env[MARKER] = f"{self._id}.{run}"
        return env

    def _cwd(self, cwd: str | None) -> str:
        if cwd is None or cwd in ("", "."):
            return self._ws
        real = self._resolve(cwd)
        if not os.path.isdir(real):
            if os.path.exists(real):
                raise InvalidInput(f"cwd {cwd!r} is not a directory", cwd=cwd)
            raise NotFound(f"cwd {cwd!r} does not exist in the workspace", cwd=cwd)
        return real

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
        _check_cmd(cmd)
        timeout = _check_timeout(timeout)
        workdir = self._cwd(cwd)
        run = self._next_run()
        env_map = self._env(run, env, secrets, workdir)
        marker = self._marker(run)
        grace = self._cfg.kill_grace
        started = time.monotonic()
        try:
            proc = await anyio.open_process(
                self._launch.argv(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env_map,
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start a command in sandbox {self._id}: {exc}", sandbox_id=self._id) from exc
        self._runs[run] = proc.pid
        out, err = _Capture(self._cfg.output_bytes), _Capture(self._cfg.output_bytes)
        timed_out = oom = False
        pumped = anyio.Event()
        open_streams = [2]

        async def pump(stream: ByteReceiveStream | None, into: _Capture) -> None:
            await _pump(stream, into)
            open_streams[0] -= 1
            if not open_streams[0]:
                pumped.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, proc.stdout, out)
                tg.start_soon(pump, proc.stderr, err)
                status = await self._wait(proc, marker, timeout)
                timed_out, oom = status == "timed_out", status == "oom"
                if timed_out:
                    await _stop([proc.pid], marker, grace)
                if not pumped.is_set():
                    with anyio.move_on_after(self._cfg.linger):
                        await pumped.wait()
                if not pumped.is_set():
                    # Processes it left behind still hold its output: they go with it.
                    await _stop([proc.pid], marker, grace)
                    with anyio.move_on_after(1.0):
                        await pumped.wait()
                    tg.cancel_scope.cancel()
        finally:
            # Both pipes at EOF and the shell reaped: asyncio has closed everything already.
            if proc.returncode is None or not pumped.is_set():
                with anyio.CancelScope(shield=True):
                    if proc.returncode is None:  # cancelled from outside: never leave it running
                        await _stop([proc.pid], marker, grace)
                    await proc.aclose()
            self._runs.pop(run, None)
        if self._closed:
            raise SandboxError(f"sandbox {self._id} was destroyed while the command ran", sandbox_id=self._id)
        assert proc.returncode is not None
        secret_values = sorted(self._mask)
        exit_code = OOM_EXIT if oom else _exit_code(proc.returncode)
        return ExecResult(
            exit_code=exit_code,
            stdout=out.text(secret_values),
            stderr=err.text(secret_values),
            timed_out=timed_out,
            truncated=out.truncated or err.truncated,
            duration=time.monotonic() - started,
            oom_killed=is_oom_kill(exit_code, timed_out=timed_out, memory_kill_seen=oom),
        )

    async def _wait(self, proc: Process, marker: bytes, timeout: float) -> str:
        """Wait for the command's shell to exit: ``"exited"``, ``"timed_out"`` (still running at ``timeout``)
        or ``"oom"`` (the memory watchdog, sampling every ``WATCH_INTERVAL``, killed its group)."""
        watching = "oom_detection" in self._caps
        limit = self._cfg.limits.memory_bytes
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed_out"
            with anyio.move_on_after(min(remaining, WATCH_INTERVAL) if watching else remaining):
                await proc.wait()
                return "exited"
            if watching and await anyio.to_thread.run_sync(_group_rss, proc.pid) > limit:
                await _stop([proc.pid], marker, 0.0, first=signal.SIGKILL)
                await proc.wait()
                return "oom"

    # -- background processes

    async def start(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ProcessInfo:
        self._ensure_open()
        _check_cmd(cmd)
        workdir = self._cwd(cwd)
        run = self._next_run()
        env_map = self._env(run, env, secrets, workdir)
        try:
            proc = await anyio.to_thread.run_sync(self._spawn, self._launch.argv(cmd), workdir, env_map)
        except OSError as exc:
            raise SandboxError(f"cannot start a command in sandbox {self._id}: {exc}", sandbox_id=self._id) from exc
        pid = f"prc_{self._id[4:]}_{run}"
        self._procs[pid] = _Background(
            proc, cmd, self._marker(run), self._cfg.output_bytes, self._cfg.limits.memory_bytes
        )
        return self._procs[pid].info(pid, sorted(self._mask))

    @staticmethod
    def _spawn(argv: list[str], cwd: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )

    def _proc(self, process_id: str) -> _Background:
        self._ensure_open()
        try:
            return self._procs[process_id]
        except (KeyError, TypeError):
            raise NotFound(f"no process {process_id!r} in sandbox {self._id}", process_id=process_id) from None

    async def process(self, process_id: str) -> ProcessInfo:
        bg = self._proc(process_id)
        await anyio.to_thread.run_sync(bg.settle)
        return bg.info(process_id, sorted(self._mask))

    async def logs(self, process_id: str) -> tuple[str, str]:
        """What it printed so far; once it has exited, everything it printed (unless a child holds on)."""
        bg = self._proc(process_id)
        await anyio.to_thread.run_sync(bg.settle)
        return bg.logs(sorted(self._mask))

    async def kill(self, process_id: str) -> None:
        bg = self._proc(process_id)
        if bg.proc.poll() is None:
            bg.killed = True
        await _stop([bg.proc.pid], bg.marker, self._cfg.kill_grace, reap=bg.proc.poll)
        await anyio.to_thread.run_sync(bg.proc.wait)

    # -- secrets

    def set_secrets(self, secrets: Mapping[str, str]) -> None:
        """Register (or replace) secrets by name; a value once registered stays masked."""
        if self._closed:
            raise SandboxError(f"sandbox {self._id} is destroyed", sandbox_id=self._id)
        _check_env(secrets, "secrets")
        self._secrets.update(secrets)
        self._mask.update(v for v in secrets.values() if v)

    # -- files

    async def read_file(self, path: str) -> bytes:
        self._ensure_open()
        real = self._resolve(path)
        return await self._fs(path, lambda: read_regular(real, path))

    async def write_file(self, path: str, data: bytes) -> None:
        self._ensure_open()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput(f"file data must be bytes, got {type(data).__name__}", field="data")
        real = self._resolve(path)
        if real == self._ws:
            raise InvalidInput("cannot write the workspace root", path=path)

        await self._fs(path, lambda: write_regular(real, data, path))

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        self._ensure_open()
        real = self._resolve(path)
        base = posixpath.normpath(path)

        def listing() -> list[FileInfo]:
            out = []
            require_directory(real, path)
            with os.scandir(real) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    is_dir = entry.is_dir(follow_symlinks=False)
                    out.append(
                        FileInfo(
                            path=entry.name if base == "." else f"{base}/{entry.name}",
                            is_dir=is_dir,
                            size=0 if is_dir else st.st_size,
                            modified_at=datetime.fromtimestamp(st.st_mtime, UTC),
                        )
                    )
            return sorted(out, key=lambda f: f.path)

        return await self._fs(path, listing)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        self._ensure_open()
        real = self._resolve(path, follow=False)
        if real == self._ws:
            raise InvalidInput("cannot remove the workspace root", path=path)

        def rm() -> None:
            if os.path.isdir(real) and not os.path.islink(real):
                if recursive:
                    shutil.rmtree(real)
                else:
                    try:
                        os.rmdir(real)
                    except OSError as exc:
                        if os.listdir(real):
                            raise InvalidInput(
                                f"directory {path!r} is not empty; pass recursive=True", path=path
                            ) from exc
                        raise
            else:
                os.unlink(real)

        await self._fs(path, rm)

    async def exists(self, path: str) -> bool:
        self._ensure_open()
        real = self._resolve(path, follow=False)
        return await anyio.to_thread.run_sync(os.path.lexists, real)

    async def _fs(self, path: str, fn: Callable[[], _T]) -> _T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such file {path!r} in the workspace", path=path) from None
        except IsADirectoryError:
            raise InvalidInput(f"{path!r} is a directory", path=path) from None
        except FileExistsError:
            raise InvalidInput(f"{path!r} (or one of its parents) exists and is not a directory", path=path) from None
        except OSError as exc:
            raise SandboxError(f"file operation on {path!r} failed: {exc}", path=path) from exc

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
        key = f"{self.snapshot_prefix}{new_id('snp')}.tar.gz"
        return await snapshot_workspace(self, blobs, key=key, ttl=ttl)

    async def restore(self, ref: SnapshotRef) -> None:
        blobs = self._require_blobs()
        if not keys.tenant_owns_snapshot(self.spec.tenant_id, ref.key):
            raise InvalidInput("snapshot belongs to another tenant", key=ref.key)
        await restore_workspace(self, blobs, ref)

    # -- lifetime

    async def keepalive(self, seconds: float) -> None:
        self._ensure_open()
        _check_timeout(seconds)
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
            pgids = [*self._runs.values(), *(bg.proc.pid for bg in self._procs.values())]
            procs = list(self._procs.values())

            def reap() -> None:
                for bg in procs:
                    bg.proc.poll()

            with anyio.CancelScope(shield=True):
                await _stop(pgids, self._marker(), self._cfg.kill_grace, reap=reap)
                for bg in self._procs.values():
                    bg.killed = bg.killed or bg.proc.poll() is None
                    await anyio.to_thread.run_sync(bg.proc.wait)
            if self._on_close is not None:
                self._on_close(self._id)
        if remove:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._dir, ignore_errors=True))


# -- the provider ----------------------------------------------------------------------------------------


class LocalSandboxProvider:
    """Creates sandboxes as directories under ``config.root``."""

    name = "local"

    def __init__(self, config: LocalSandboxConfig, *, blobs: BlobStore | None = None) -> None:
        bad = NEVER_PASS.intersection(config.pass_env)
        if bad:
            raise ConfigError(f"{', '.join(sorted(bad))} can never be passed to sandboxed commands")
        root = os.path.realpath(os.path.abspath(os.path.expanduser(config.root)))
        self.config = attrs.evolve(config, root=root)
        self.blobs = blobs
        self._launch = _launch_for(config.limits)
        self._live: dict[str, LocalSandbox] = {}

    def __repr__(self) -> str:
        return f"LocalSandboxProvider(root={self.config.root!r}, live={len(self._live)})"

    def _dir(self, sandbox_id: str) -> str:
        return os.path.join(self.config.root, sandbox_id)

    def _make(self, sandbox_id: str, spec: SandboxSpec) -> LocalSandbox:
        sb = LocalSandbox(
            sandbox_id,
            self._dir(sandbox_id),
            spec,
            self.config,
            self._launch,
            self.blobs,
            on_close=self._forget,
        )
        self._live[sandbox_id] = sb
        return sb

    def _forget(self, sandbox_id: str) -> None:
        self._live.pop(sandbox_id, None)

    async def create(self, spec: SandboxSpec) -> LocalSandbox:
        _check_env(spec.env, "spec.env")
        sandbox_id = new_id("sbx")
        directory = self._dir(sandbox_id)
        meta = {
            "id": sandbox_id,
            "tenant_id": spec.tenant_id,
            "session_id": spec.session_id,
            "labels": _labels(spec),
            "created_at_ms": time.time_ns() // 1_000_000,
        }

        def make() -> None:
            os.makedirs(os.path.join(directory, "workspace"))
            os.makedirs(os.path.join(directory, "tmp"))
            with open(os.path.join(directory, "meta.json"), "w") as f:
                json.dump(meta, f)

        try:
            await anyio.to_thread.run_sync(make)
        except OSError as exc:
            raise SandboxError(f"cannot create a sandbox under {self.config.root}: {exc}") from exc
        return self._make(sandbox_id, spec)

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> LocalSandbox:
        if sandbox_id in self._live:
            return self._live[sandbox_id]
        if not isinstance(sandbox_id, str) or not _SANDBOX_ID.fullmatch(sandbox_id):
            raise NotFound(f"no local sandbox {sandbox_id!r}", sandbox_id=sandbox_id)
        if not await anyio.to_thread.run_sync(os.path.isdir, os.path.join(self._dir(sandbox_id), "workspace")):
            raise NotFound(f"no local sandbox {sandbox_id!r}", sandbox_id=sandbox_id)
        return self._make(sandbox_id, spec)

    async def list_labeled(self, labels: Mapping[str, str]) -> list[tuple[str, datetime | None]]:
        def scan() -> list[tuple[str, datetime | None]]:
            out: list[tuple[str, datetime | None]] = []
            try:
                names = sorted(os.listdir(self.config.root))
            except FileNotFoundError:
                return out
            for name in names:
                try:
                    with open(os.path.join(self.config.root, name, "meta.json")) as f:
                        meta = json.load(f)
                except (OSError, ValueError):
                    continue
                have = meta.get("labels", {})
                if all(have.get(k) == v for k, v in labels.items()):
                    created = meta.get("created_at_ms")
                    out.append((name, datetime.fromtimestamp(created / 1000, UTC) if created else None))
            return out

        return await anyio.to_thread.run_sync(scan)

    async def destroy_id(self, sandbox_id: str) -> None:
        try:
            sb = await self.attach(sandbox_id, SandboxSpec(tenant_id="", session_id=""))
        except NotFound:
            return
        await sb.destroy()

    async def reap_expired(self) -> list[str]:
        """Destroy the live sandboxes whose lifetime (extended by keepalives) has run out; their ids."""
        gone = [sb for sb in list(self._live.values()) if sb.expired]
        for sb in gone:
            await sb.destroy()
        return [sb.id for sb in gone]

    async def aclose(self) -> None:
        """Stop the processes of every sandbox this provider opened; their directories stay (``attach``)."""
        for sb in list(self._live.values()):
            await sb.close()


def config_from_settings(settings: Settings) -> LocalSandboxConfig:
    """The local sandbox's configuration from its ``local_sandbox_*`` settings."""
    return LocalSandboxConfig(
        root=settings.local_sandbox_root,
        output_bytes=settings.local_sandbox_output_bytes,
        limits=LocalLimits(
            memory_bytes=settings.local_sandbox_memory_bytes,
            cpu_seconds=settings.local_sandbox_cpu_seconds,
            open_files=settings.local_sandbox_open_files,
            processes=settings.local_sandbox_processes,
        ),
        kill_grace=settings.local_sandbox_kill_grace,
        pass_env=tuple(settings.local_sandbox_pass_env),
    )


async def open_sandbox_provider(settings: Settings, *, blobs: BlobStore | None = None) -> LocalSandboxProvider:
    """The ``local`` entry of :data:`openma.registry.sandboxes`."""
    return LocalSandboxProvider(config_from_settings(settings), blobs=blobs)


__all__ = [
    "LocalLimits",
    "LocalSandbox",
    "LocalSandboxConfig",
    "LocalSandboxProvider",
    "open_sandbox_provider",
]
