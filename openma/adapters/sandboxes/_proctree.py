"""The process trees of the local sandbox, seen through psutil: memory of a group, stray processes of a
run, and stopping them all.

Every command starts in a new session, so its process group is its tree as long as nothing leaves it.
What does leave it (``setsid``, a daemon) still carries the run's marker (``OPENMA_SANDBOX_RUN``) in its
environment, and is found by that. psutil reads both on every platform it supports, so the memory watchdog
and the stray-process sweep work wherever psutil does, not only on Linux's ``/proc``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from typing import Final

import anyio
import attrs
import psutil

from openma.adapters.sandboxes._config import MARKER


def exit_code(returncode: int) -> int:
    """A return code as a shell reports it: killed by signal N is ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode


@attrs.frozen
class RunMarker:
    """Which marked processes belong to a run (``exact``) or to any run of a sandbox (a prefix)."""

    value: str
    exact: bool

    def matches(self, found: str | None) -> bool:
        if found is None:
            return False
        return found == self.value if self.exact else found.startswith(self.value)


def _ids(pid: int) -> tuple[int, int] | None:
    """``(process group, session)`` of a process, or ``None`` when it is gone (or not ours to see)."""
    try:
        return os.getpgid(pid), os.getsid(pid)
    except OSError:
        return None


def group_rss(leader: int) -> int:
    """Resident bytes of every process in ``leader``'s process group or session."""
    total = 0
    for proc in psutil.process_iter():
        ids = _ids(proc.pid)
        if ids is None or leader not in ids:
            continue
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


_PROC_ENVIRON: Final = os.path.isfile("/proc/self/environ")
_KEY: Final = MARKER.encode() + b"="


def _marker_of(pid: int) -> str | None:
    """The run marker in a process's environment, if it has one.

    Where ``/proc/<pid>/environ`` exists it is searched as raw bytes (several times faster than having
    psutil parse every environment into a dict); elsewhere psutil reads it.
    """
    if not _PROC_ENVIRON:
        try:
            value: str | None = psutil.Process(pid).environ().get(MARKER)
        except (psutil.Error, OSError):
            return None
        return value
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    at = 0 if env.startswith(_KEY) else env.find(b"\0" + _KEY) + 1
    if at == 0 and not env.startswith(_KEY):
        return None
    start = at + len(_KEY)
    end = env.find(b"\0", start)
    return env[start : end if end >= 0 else len(env)].decode(errors="replace")


def marked(marker: RunMarker) -> list[int]:
    """Pids (other than this process) whose environment carries ``marker``."""
    me = os.getpid()
    return [pid for pid in psutil.pids() if pid != me and marker.matches(_marker_of(pid))]


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in the group.

    Orphans are reparented to PID 1, and not every PID 1 reaps (a container whose PID 1 is the app), so a
    zombie must not count as alive.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for proc in psutil.process_iter():
        ids = _ids(proc.pid)
        if ids is None or ids[0] != pgid:
            continue
        try:
            if proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return True
        except psutil.Error:
            continue
    return False


def signal_all(pgids: Sequence[int], marker: RunMarker | None, sig: int) -> int:
    """Send ``sig`` to the process groups and to every marked process; how many marked ones were found."""
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    found = marked(marker) if marker is not None else []
    for pid in found:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return len(found)


def survivors(pgids: Sequence[int], marker: RunMarker | None) -> bool:
    return any(group_alive(g) for g in pgids) or (marker is not None and bool(marked(marker)))


async def stop(pgids: Sequence[int], marker: RunMarker | None, grace: float, *, first: int = signal.SIGTERM) -> None:
    """Signal the groups and marked processes with ``first``; SIGKILL whatever is left after ``grace``."""
    await anyio.to_thread.run_sync(signal_all, pgids, marker, first)
    if first != signal.SIGKILL:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            await anyio.sleep(0.02)
            if not await anyio.to_thread.run_sync(survivors, pgids, marker):
                return
    await anyio.to_thread.run_sync(signal_all, pgids, marker, signal.SIGKILL)
