"""The ``file://`` engine: plain files, durable atomic puts, and conditions that hold across processes.

Layout under the root: an object's bytes at ``<root>/<key>`` (so the tree can be browsed and backed up as
is) and its record (etag, size, content type, metadata, times) at ``<root>/.openma/meta/<key>``.

* **Atomic, durable puts.** The bytes are streamed into a staged file under ``.openma/tmp`` and fsynced;
  then, holding the key's lock, the record is written (temp file, fsync, rename) and the staged file is
  renamed over the object, and both directories are fsynced. Readers never see a torn object.
* **Crash safety between the two renames.** The record names the staged file and its inode. A reader that
  finds a record whose inode is not the object's (a put crashed after writing the record) finishes the
  rename if the staged file is still there; otherwise it serves the bytes on disk as an unrecorded object.
* **Locks** are ``flock`` locks on 64 striped lock files, so they hold between threads *and* processes
  (every acquisition opens its own descriptor) and vanish with a dead process. Writers take the key's lock
  exclusively for the check-and-rename only (never while streaming bytes); readers take it shared just
  long enough to pair the record with an open descriptor, then read the snapshot lock-free.
* **Unrecorded files** (copied in by hand) are served with an etag made of inode, mtime and size.
* A key and keys below it cannot coexist (``a`` and ``a/b``): a put that would need both is ``Conflict``.

POSIX only (``fcntl.flock``); on NFS, ``flock`` is only as good as the server's lock support.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, Final

import anyio

from openma.adapters.fsspec_blobs._common import (
    EXPIRY_DIR,
    INTERNAL,
    LOCK_DIR,
    META_DIR,
    TMP_DIR,
    Meta,
    Source,
    WriteSpec,
    decode_record,
    encode_record,
    marker_time,
    new_etag,
    pieces,
)
from openma.adapters.fsspec_blobs._local_io import (
    COLLISION,
    O_CLOEXEC,
    O_NOFOLLOW,
    Inconsistent,
    LocalReader,
    foreign_meta,
    fsync_dir,
    storage_error,
    write_all,
)
from openma.errors import Conflict, StorageUnavailable

LOCK_STRIPES: Final = 64


class LocalEngine:
    capabilities: Final = frozenset({"concurrent_writers", "multi_process"})

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.identity = f"file://{self.root}"

    def __repr__(self) -> str:
        return f"LocalEngine({self.root!r})"

    # -- paths

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def _data(self, key: str) -> str:
        return self._path(key)

    def _meta(self, key: str) -> str:
        return self._path(META_DIR + key)

    def _tmp(self, name: str) -> str:
        return self._path(TMP_DIR + name)

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            raise storage_error(self.root, exc) from exc

    async def setup(self) -> None:
        await self._run(self._setup)

    def _setup(self) -> None:
        for sub in (META_DIR, TMP_DIR, LOCK_DIR, EXPIRY_DIR):
            os.makedirs(self._path(sub), exist_ok=True)

    # -- locks

    @contextmanager
    def _locked(self, key: str, exclusive: bool) -> Iterator[None]:
        stripe = zlib.crc32(key.encode("utf-8")) % LOCK_STRIPES
        fd = os.open(self._path(f"{LOCK_DIR}{stripe:02x}"), os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- records

    def _read_record(self, key: str) -> bytes | None:
        try:
            with open(self._meta(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def _stat_data(self, key: str) -> os.stat_result | None:
        try:
            st = os.stat(self._data(key), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def _publish(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst``, making parents (again, if a concurrent delete pruned them)."""
        for _ in range(8):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            try:
                os.replace(src, dst)
                break
            except FileNotFoundError:
                if not os.path.exists(src):
                    raise
        else:  # pragma: no cover - only under pathological churn
            raise StorageUnavailable(f"could not publish {dst!r}: its directory keeps disappearing")
        fsync_dir(os.path.dirname(dst))

    def _write_record(self, key: str, raw: bytes) -> None:
        tmp = self._tmp(f"{uuid.uuid4().hex}.rec")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644)
        try:
            write_all(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            self._publish(tmp, self._meta(key))
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise

    def _current(self, key: str, *, repair: bool) -> Meta | None:
        """The object's record, checked against the file on disk (caller holds the key's lock)."""
        raw = self._read_record(key)
        st = self._stat_data(key)
        decoded = decode_record(key, raw) if raw is not None else None
        if decoded is None:
            return foreign_meta(key, st) if st is not None else None
        meta, fields = decoded
        if st is not None and st.st_ino == fields.get("ino"):
            return meta
        if not repair:
            raise Inconsistent(key)
        staged = fields.get("staged")
        if isinstance(staged, str) and "/" not in staged:
            try:
                staged_st = os.stat(self._tmp(staged), follow_symlinks=False)
            except FileNotFoundError:
                staged_st = None
            if staged_st is not None and staged_st.st_ino == fields.get("ino"):
                self._publish(self._tmp(staged), self._data(key))  # finish the interrupted put
                return meta
        with suppress(FileNotFoundError):
            os.unlink(self._meta(key))
        return foreign_meta(key, st) if st is not None else None

    def _checked(self, key: str) -> Meta | None:
        """``_current`` for readers: shared lock, and an exclusive one only if a repair is due."""
        try:
            with self._locked(key, exclusive=False):
                return self._current(key, repair=False)
        except Inconsistent:
            with self._locked(key, exclusive=True):
                return self._current(key, repair=True)

    # -- writes

    def _stage_open(self) -> tuple[int, str]:
        name = uuid.uuid4().hex
        fd = os.open(self._tmp(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644)
        return fd, name

    def _stage_close(self, fd: int) -> tuple[int, int]:
        try:
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return st.st_ino, st.st_size

    def _stage_bytes(self, data: bytes) -> tuple[str, int, int]:
        fd, name = self._stage_open()
        try:
            write_all(fd, data)
        except BaseException:
            os.close(fd)
            os.unlink(self._tmp(name))
            raise
        ino, size = self._stage_close(fd)
        return name, ino, size

    def _discard(self, name: str, fd: int | None = None) -> None:
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
        with suppress(OSError):
            os.unlink(self._tmp(name))

    async def write(self, spec: WriteSpec, source: Source, now_ms: int) -> Meta:
        if isinstance(source, bytes):
            name, ino, size = await self._run(self._stage_bytes, source)
        else:
            fd, name = await self._run(self._stage_open)
            try:
                async for piece in pieces(source):
                    await self._run(write_all, fd, piece)
                ino, size = await self._run(self._stage_close, fd)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._discard, name, fd)
                raise
        try:
            meta: Meta = await self._run(self._commit, spec, name, ino, size, now_ms)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._discard, name)
            raise
        return meta

    def _commit(self, spec: WriteSpec, staged: str, ino: int, size: int, now_ms: int) -> Meta:
        key = spec.key
        with self._locked(key, exclusive=True):
            current = self._current(key, repair=True)
            live = current is not None and current.live(now_ms)
            if spec.if_none_match and live:
                raise Conflict(f"blob {key!r} already exists (if_none_match='*')", key=key)
            if spec.if_match is not None and (current is None or not live or current.etag != spec.if_match):
                raise Conflict(f"blob {key!r} does not have etag {spec.if_match!r} (if_match)", key=key)
            meta = Meta(
                key=key,
                size=size,
                etag=new_etag(),
                content_type=spec.content_type,
                metadata=spec.metadata,
                created_ms=spec.created_ms,
                expires_ms=spec.expires_ms,
            )
            previous = self._read_record(key)
            try:
                self._write_record(key, encode_record(meta, ino=ino, staged=staged))
            except COLLISION:
                raise self._collision(key) from None
            try:
                self._publish(self._tmp(staged), self._data(key))
            except COLLISION:
                if previous is not None:
                    self._write_record(key, previous)
                else:
                    with suppress(FileNotFoundError):
                        os.unlink(self._meta(key))
                raise self._collision(key) from None
            return meta

    @staticmethod
    def _collision(key: str) -> Conflict:
        return Conflict(
            f"blob key {key!r} collides with another key on this filesystem (a key and keys below it, "
            "such as 'a' and 'a/b', cannot coexist on file://)",
            key=key,
        )

    # -- reads

    def _open_snapshot(self, key: str) -> tuple[Meta, int] | None:
        def attempt() -> tuple[Meta, int] | None:
            meta = self._current(key, repair=exclusive)
            if meta is None:
                return None
            fd = os.open(self._data(key), os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            return meta, fd

        exclusive = False
        try:
            with self._locked(key, exclusive=False):
                return attempt()
        except Inconsistent:
            exclusive = True
            with self._locked(key, exclusive=True):
                return attempt()

    def _read(self, key: str, offset: int, length: int | None) -> tuple[Meta, bytes] | None:
        opened = self._open_snapshot(key)
        if opened is None:
            return None
        meta, fd = opened
        try:
            end = meta.size if length is None else min(meta.size, offset + length)
            parts: list[bytes] = []
            pos = offset
            while pos < end:
                chunk = os.pread(fd, end - pos, pos)
                if not chunk:
                    break
                parts.append(chunk)
                pos += len(chunk)
        finally:
            os.close(fd)
        return meta, b"".join(parts)

    async def stat(self, key: str) -> Meta | None:
        meta: Meta | None = await self._run(self._checked, key)
        return meta

    async def read(self, key: str, offset: int, length: int | None) -> tuple[Meta, bytes] | None:
        result: tuple[Meta, bytes] | None = await self._run(self._read, key, offset, length)
        return result

    @asynccontextmanager
    async def open(self, key: str, offset: int, length: int | None) -> AsyncIterator[LocalReader | None]:
        opened = await self._run(self._open_snapshot, key)
        if opened is None:
            yield None
            return
        meta, fd = opened
        reader = LocalReader(self._run, meta, fd, offset, length)
        try:
            yield reader
        finally:
            with anyio.CancelScope(shield=True):
                await reader.aclose()

    # -- deletes

    def _prune(self, path: str, stop: str) -> None:
        parent = os.path.dirname(path)
        while parent != stop and parent.startswith(stop + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                return
            parent = os.path.dirname(parent)

    def _remove(self, key: str, if_etag: str | None) -> bool:
        with self._locked(key, exclusive=True):
            current = self._current(key, repair=True)
            if current is None or (if_etag is not None and current.etag != if_etag):
                return False
            for path, stop in ((self._data(key), self.root), (self._meta(key), self._path(META_DIR.rstrip("/")))):
                try:
                    os.unlink(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                self._prune(path, stop)
            return True

    async def remove(self, key: str, if_etag: str | None = None) -> bool:
        removed: bool = await self._run(self._remove, key, if_etag)
        return removed

    # -- listing

    def _walk(self, prefix: str, after: str) -> Iterator[str]:
        """Keys starting with ``prefix`` and greater than ``after``, in code point order, pruning early."""

        def walk(path: str, rel: str) -> Iterator[str]:
            try:
                with os.scandir(path) as it:
                    entries = []
                    for entry in it:
                        if not rel and entry.name == INTERNAL.rstrip("/"):
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            entries.append((entry.name + "/", entry.name, True))
                        elif entry.is_file(follow_symlinks=False):
                            entries.append((entry.name, entry.name, False))
            except (FileNotFoundError, NotADirectoryError):
                return
            entries.sort()
            for sort_key, name, is_dir in entries:
                full = rel + sort_key
                if not (full.startswith(prefix) or prefix.startswith(full)):
                    continue
                if is_dir:
                    if after >= full and not after.startswith(full):
                        continue  # every key below sorts before ``after``
                    yield from walk(os.path.join(path, name), full)
                elif full > after:
                    yield full

        return walk(self.root, "")

    def _scan(self, prefix: str, after: str, limit: int) -> tuple[list[Meta], str, bool]:
        found: list[Meta] = []
        last = after
        for key in self._walk(prefix, after):
            if len(found) >= limit:
                return found, last, False
            last = key
            meta = self._checked(key)
            if meta is not None:
                found.append(meta)
        return found, last, True

    async def scan(self, prefix: str, after: str, limit: int) -> tuple[list[Meta], str, bool]:
        result: tuple[list[Meta], str, bool] = await self._run(self._scan, prefix, after, limit)
        return result

    # -- expiry index and upkeep

    def _put_marker(self, name: str, key: str) -> None:
        path = self._path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = self._tmp(f"{uuid.uuid4().hex}.mark")
        with open(tmp, "wb") as f:
            f.write(key.encode("utf-8"))
        os.replace(tmp, path)

    async def put_marker(self, name: str, key: str) -> None:
        await self._run(self._put_marker, name, key)

    def _due_markers(self, upto_ms: int) -> list[tuple[str, str]]:
        base = self._path(EXPIRY_DIR.rstrip("/"))
        out: list[tuple[str, str]] = []
        try:
            stamps = sorted(os.listdir(base))
        except FileNotFoundError:
            return out
        for stamp in stamps:
            when = marker_time(f"{EXPIRY_DIR}{stamp}/")
            if when is None:
                continue
            if when > upto_ms:
                break
            try:
                names = sorted(os.listdir(os.path.join(base, stamp)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                try:
                    with open(os.path.join(base, stamp, name), "rb") as f:
                        key = f.read().decode("utf-8")
                except (FileNotFoundError, UnicodeDecodeError):
                    continue
                out.append((f"{EXPIRY_DIR}{stamp}/{name}", key))
        return out

    async def due_markers(self, upto_ms: int) -> list[tuple[str, str]]:
        result: list[tuple[str, str]] = await self._run(self._due_markers, upto_ms)
        return result

    def _remove_marker(self, name: str) -> None:
        path = self._path(name)
        with suppress(FileNotFoundError):
            os.unlink(path)
        with suppress(OSError):
            os.rmdir(os.path.dirname(path))

    async def remove_marker(self, name: str) -> None:
        await self._run(self._remove_marker, name)

    def _clean_uploads(self, older_than_ms: int) -> int:
        base = self._path(TMP_DIR.rstrip("/"))
        removed = 0
        with os.scandir(base) as it:
            for entry in it:
                try:
                    if entry.stat(follow_symlinks=False).st_mtime_ns // 1_000_000 < older_than_ms:
                        os.unlink(entry.path)
                        removed += 1
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
        return removed

    async def clean_uploads(self, older_than_ms: int) -> int:
        removed: int = await self._run(self._clean_uploads, older_than_ms)
        return removed

    async def aclose(self) -> None:
        return None
