"""The file-level helpers of the ``file://`` engine (:mod:`.local`): fsync, whole writes, and the reader.

Split from :mod:`.local` so each module stays small; nothing here is public.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias

import anyio

from openma.adapters.fsspec_blobs._common import Meta
from openma.errors import StorageUnavailable

#: How the engine runs a blocking call: in a worker thread, an ``OSError`` turned into ``StorageUnavailable``.
Run: TypeAlias = Callable[..., Awaitable[Any]]

O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
COLLISION: Final = (IsADirectoryError, NotADirectoryError, FileExistsError)


class Inconsistent(Exception):
    """The record does not describe the file on disk; only a writer (exclusive lock) may repair it."""


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def foreign_meta(key: str, st: os.stat_result) -> Meta:
    return Meta(
        key=key,
        size=st.st_size,
        etag=f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}",
        content_type="application/octet-stream",
        metadata={},
        created_ms=st.st_mtime_ns // 1_000_000,
    )


def storage_error(root: str, exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"blob store at {root!r} failed: {exc}", root=root)


class LocalReader:
    """A snapshot of one object: an open descriptor, read with ``pread`` in worker threads."""

    def __init__(self, run: Run, meta: Meta, fd: int, offset: int, length: int | None) -> None:
        self._run = run
        self.meta = meta
        self._fd: int | None = fd
        self._pos = min(offset, meta.size)
        self._end = meta.size if length is None else min(meta.size, offset + length)

    async def read_chunk(self, n: int) -> bytes:
        if self._fd is None or self._pos >= self._end:
            return b""
        chunk: bytes = await self._run(os.pread, self._fd, min(n, self._end - self._pos), self._pos)
        self._pos += len(chunk)
        if not chunk:
            self._pos = self._end
        return chunk

    async def aclose(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            await anyio.to_thread.run_sync(os.close, fd)
