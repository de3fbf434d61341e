"""Lease locks as ``flock(2)`` on one file per key, in a directory next to the SQLite database.

``flock`` locks belong to an open file description: the kernel frees them the moment the process that holds
them dies (``SIGKILL`` included), and two descriptions of one file conflict even inside one process, so the
same mechanism fences tasks, threads and processes of one host (the only place a SQLite file is shared).
Waiting polls with a non-blocking try, so no thread ever sits blocked on a lock nobody will free.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Final

import anyio

from openma.errors import SessionBusy

_POLL_START: Final = 0.002
_POLL_MAX: Final = 0.05


class FlockHandle:
    def __init__(self, key: str, fd: int) -> None:
        self._key = key
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"FlockHandle({self._key!r}, held={self._fd is not None})"

    @property
    def key(self) -> str:
        return self._key

    def alive(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


class FlockLeaseLock:
    """One lock file per key under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FlockLeaseLock({str(self.directory)!r})"

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".lock")

    def _try(self, path: Path) -> int | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def acquire(self, key: str, *, wait: float) -> FlockHandle:
        path = self._path(key)
        deadline = time.monotonic() + max(0.0, wait)
        delay = _POLL_START
        while True:
            fd = self._try(path)
            if fd is not None:
                return FlockHandle(key, fd)
            if time.monotonic() >= deadline:
                raise SessionBusy(f"{key} is held by another actor", key=key, waited=wait)
            await anyio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, _POLL_MAX)

    async def aclose(self) -> None:
        return None
