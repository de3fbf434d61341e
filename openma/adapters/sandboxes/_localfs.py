"""File operations of the local sandbox, on host paths already confined to the workspace
(:mod:`openma.adapters.sandboxes._confine`), run in a worker thread by :func:`run`, which turns ``OSError``
into the port's errors. They never block on a special file.

A workspace may hold anything a command can make: FIFOs, sockets, device nodes (``mknod`` as root). Opening
a FIFO for reading blocks until a writer appears and opening it for writing blocks until a reader does; the
blocked call sits in a worker thread that no cancel scope can reach. So the file API reads and writes
**regular files only**: anything else is an :class:`~openma.errors.InvalidInput` that names the file type,
raised before anything is opened or truncated. The type is checked with ``stat`` first and again on the open
descriptor (``fstat``), which is opened with ``O_NONBLOCK`` so a file swapped for a FIFO in between cannot
block either.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, TypeVar

import anyio

from openma.errors import InvalidInput, NotFound, SandboxError
from openma.ports.sandbox import FileInfo

_T = TypeVar("_T")

_KINDS: Final = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
_OPEN_FLAGS: Final = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def file_type(mode: int) -> str:
    """What a non-regular file is, in words."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def refuse(path: str, mode: int, what: str) -> InvalidInput:
    kind = file_type(mode)
    return InvalidInput(
        f"cannot {what} {path!r}: it is {kind}; the file API reads and writes regular files only",
        path=path,
        file_type=kind,
    )


def _check(path: str, mode: int, what: str) -> None:
    if not stat.S_ISREG(mode):
        raise refuse(path, mode, what)


def read_regular(real: str, path: str) -> bytes:
    """The whole content of the regular file ``real`` (``path`` as the caller wrote it, for errors)."""
    _check(path, os.stat(real).st_mode, "read")
    fd = os.open(real, os.O_RDONLY | _OPEN_FLAGS)
    try:
        _check(path, os.fstat(fd).st_mode, "read")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def write_regular(real: str, data: bytes | bytearray | memoryview, path: str) -> None:
    """Create or replace the content of the regular file ``real``, creating its parent directories.

    An existing file of another type is refused before it is opened, so nothing is truncated or written.
    """
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        os.makedirs(os.path.dirname(real), exist_ok=True)
    else:
        _check(path, mode, "write")
    fd = os.open(real, os.O_WRONLY | os.O_CREAT | _OPEN_FLAGS, 0o666)
    try:
        _check(path, os.fstat(fd).st_mode, "write")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)


def require_directory(real: str, path: str) -> None:
    """Refuse to list anything but a directory (a missing path stays ``FileNotFoundError``)."""
    mode = os.stat(real).st_mode
    if not stat.S_ISDIR(mode):
        kind = "a regular file" if stat.S_ISREG(mode) else file_type(mode)
        raise InvalidInput(f"cannot list {path!r}: it is {kind}, not a directory", path=path, file_type=kind)


def listing(real: str, path: str) -> list[FileInfo]:
    """The entries of directory ``real`` as the caller named it (``path``), sorted by path."""
    base = posixpath.normpath(path)
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


def remove(real: str, path: str, *, recursive: bool) -> None:
    """Remove a file, link or special file; a directory when empty, or with ``recursive``."""
    if os.path.isdir(real) and not os.path.islink(real):
        if recursive:
            shutil.rmtree(real)
            return
        try:
            os.rmdir(real)
        except OSError as exc:
            if os.listdir(real):
                raise InvalidInput(f"directory {path!r} is not empty; pass recursive=True", path=path) from exc
            raise
    else:
        os.unlink(real)


async def run(path: str, fn: Callable[[], _T]) -> _T:
    """``fn()`` in a worker thread; a missing file is ``NotFound``, a wrong type ``InvalidInput``, any other
    ``OSError`` a ``SandboxError`` (``path`` as the caller wrote it, for the message)."""
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
