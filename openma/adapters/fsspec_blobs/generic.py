"""The engine for every other fsspec filesystem (``memory://`` and any URL without a native engine).

Layout as on ``file://``: bytes at ``<root>/<key>``, the record at ``<root>/.openma/meta/<key>``. An object
exists when its record does (files without one are served as unrecorded objects, with the filesystem's own
etag or one made of size and modification time).

* Bytes are staged under ``.openma/tmp``, then, holding the key's lock, the condition is checked, the staged
  file is moved into place and the record written.
* Locks are in-process (striped ``threading`` locks shared by every store on the same filesystem), so
  conditional puts are exact between the threads and tasks of one process, which is all ``memory://``
  has. On a shared remote filesystem this engine does not claim ``multi_process``; S3 has its own engine
  that uses the service's conditional writes.
* A streamed read checks, chunk by chunk, that the object is still the one it opened; if a put replaced it
  mid-read the read fails with ``Conflict`` rather than mixing two versions.
* All calls run in worker threads (``anyio.to_thread``), so a slow filesystem never blocks the event loop.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import Any, Final

import anyio

from openma.adapters.fsspec_blobs._common import (
    EXPIRY_DIR,
    INTERNAL,
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
from openma.errors import Conflict, StorageUnavailable

LOCK_STRIPES: Final = 64
_COLLISION: Final = (IsADirectoryError, NotADirectoryError, FileExistsError)
_LOCKS: dict[str, list[threading.Lock]] = {}
_LOCKS_GUARD = threading.Lock()


def _stripes(identity: str) -> list[threading.Lock]:
    with _LOCKS_GUARD:
        if identity not in _LOCKS:
            _LOCKS[identity] = [threading.Lock() for _ in range(LOCK_STRIPES)]
        return _LOCKS[identity]


def _mtime_ms(info: dict[str, Any]) -> int:
    for field in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
        if isinstance(value, int | float):
            return int(value * 1000)
    return 0


class GenericEngine:
    capabilities: Final = frozenset({"concurrent_writers"})

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.identity = f"{protocol}://{self.root}"
        self._locks = _stripes(self.identity)

    def __repr__(self) -> str:
        return f"GenericEngine({self.identity!r})"

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except (OSError, ValueError) as exc:
            raise StorageUnavailable(f"blob store at {self.identity!r} failed: {exc}") from exc

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[hash(key) % LOCK_STRIPES]

    async def setup(self) -> None:
        await self._run(self._setup)

    def _setup(self) -> None:
        for sub in (META_DIR, TMP_DIR, EXPIRY_DIR):
            self.fs.makedirs(self._path(sub.rstrip("/")), exist_ok=True)

    # -- records

    def _current(self, key: str) -> Meta | None:
        try:
            raw = self.fs.cat_file(self._path(META_DIR + key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raw = None
        decoded = decode_record(key, bytes(raw)) if raw is not None else None
        if decoded is not None:
            return decoded[0]
        try:
            info = self.fs.info(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if info.get("type") != "file":
            return None
        size = int(info.get("size") or 0)
        mtime = _mtime_ms(info)
        etag = str(info.get("ETag") or info.get("etag") or f"{size:x}-{mtime:x}").strip('"')
        return Meta(key, size, etag, "application/octet-stream", {}, mtime)

    def _checked(self, key: str) -> Meta | None:
        with self._lock(key):
            return self._current(key)

    # -- writes

    def _stage_bytes(self, data: bytes) -> str:
        name = uuid.uuid4().hex
        self.fs.pipe_file(self._path(TMP_DIR + name), data)
        return name

    def _stage_open(self) -> tuple[Any, str]:
        name = uuid.uuid4().hex
        return self.fs.open(self._path(TMP_DIR + name), "wb"), name

    def _discard(self, name: str, f: Any = None) -> None:
        if f is not None:
            with suppress(Exception):
                f.close()
        with suppress(Exception):
            self.fs.rm_file(self._path(TMP_DIR + name))

    async def write(self, spec: WriteSpec, source: Source, now_ms: int) -> Meta:
        if isinstance(source, bytes):
            name: str = await self._run(self._stage_bytes, source)
            size = len(source)
        else:
            f, name = await self._run(self._stage_open)
            size = 0
            try:
                async for piece in pieces(source):
                    await self._run(f.write, piece)
                    size += len(piece)
                await self._run(f.close)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._discard, name, f)
                raise
        try:
            meta: Meta = await self._run(self._commit, spec, name, size, now_ms)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._discard, name)
            raise
        return meta

    def _commit(self, spec: WriteSpec, staged: str, size: int, now_ms: int) -> Meta:
        key = spec.key
        with self._lock(key):
            current = self._current(key)
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
            try:
                self._check_room(key)
                self.fs.cp_file(self._path(TMP_DIR + staged), self._path(key))
                self.fs.pipe_file(self._path(META_DIR + key), encode_record(meta))
            except _COLLISION:
                raise Conflict(
                    f"blob key {key!r} collides with another key on this filesystem (a key and keys below "
                    "it, such as 'a' and 'a/b', cannot coexist here)",
                    key=key,
                ) from None
            with suppress(FileNotFoundError):
                self.fs.rm_file(self._path(TMP_DIR + staged))
            return meta

    def _check_room(self, key: str) -> None:
        """Refuse a key that would need a file to also be a directory (or the other way round).

        Checked explicitly because filesystems differ: ``memory://`` would quietly hold both, and a copy
        onto a path that is a directory lands *inside* it.
        """
        parts = key.split("/")
        for i in range(1, len(parts)):
            if self.fs.isfile(self._path("/".join(parts[:i]))):
                raise FileExistsError(key)
        if self.fs.isdir(self._path(key)):
            raise IsADirectoryError(key)

    # -- reads

    def _read(self, key: str, offset: int, length: int | None) -> tuple[Meta, bytes] | None:
        with self._lock(key):
            meta = self._current(key)
            if meta is None:
                return None
            end = meta.size if length is None else min(meta.size, offset + length)
            if offset >= end:
                return meta, b""
            return meta, bytes(self.fs.cat_file(self._path(key), start=offset, end=end))

    def _read_if(self, key: str, etag: str, start: int, end: int) -> bytes:
        with self._lock(key):
            meta = self._current(key)
            if meta is None or meta.etag != etag:
                raise Conflict(f"blob {key!r} was replaced or deleted while it was being read", key=key)
            return bytes(self.fs.cat_file(self._path(key), start=start, end=end))

    async def stat(self, key: str) -> Meta | None:
        meta: Meta | None = await self._run(self._checked, key)
        return meta

    async def read(self, key: str, offset: int, length: int | None) -> tuple[Meta, bytes] | None:
        result: tuple[Meta, bytes] | None = await self._run(self._read, key, offset, length)
        return result

    @asynccontextmanager
    async def open(self, key: str, offset: int, length: int | None) -> AsyncIterator[_GenericReader | None]:
        meta = await self.stat(key)
        yield None if meta is None else _GenericReader(self, meta, offset, length)

    # -- deletes

    def _remove(self, key: str, if_etag: str | None) -> bool:
        with self._lock(key):
            current = self._current(key)
            if current is None or (if_etag is not None and current.etag != if_etag):
                return False
            for path in (self._path(META_DIR + key), self._path(key)):
                with suppress(FileNotFoundError, NotADirectoryError):
                    self.fs.rm_file(path)
            return True

    async def remove(self, key: str, if_etag: str | None = None) -> bool:
        removed: bool = await self._run(self._remove, key, if_etag)
        return removed

    # -- listing

    def _keys(self, prefix: str, after: str) -> list[str]:
        base = self.root + "/"
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            paths = self.fs.find(self._path(directory) if directory else self.root)
        except FileNotFoundError:
            return []
        keys = []
        for path in paths:
            if not path.startswith(base):
                continue
            key = path[len(base) :]
            if key.startswith(INTERNAL) or not key.startswith(prefix) or key <= after:
                continue
            keys.append(key)
        keys.sort()
        return keys

    def _scan(self, prefix: str, after: str, limit: int) -> tuple[list[Meta], str, bool]:
        keys = self._keys(prefix, after)
        found: list[Meta] = []
        last = after
        for key in keys[:limit]:
            last = key
            meta = self._checked(key)
            if meta is not None:
                found.append(meta)
        return found, last, len(keys) <= limit

    async def scan(self, prefix: str, after: str, limit: int) -> tuple[list[Meta], str, bool]:
        result: tuple[list[Meta], str, bool] = await self._run(self._scan, prefix, after, limit)
        return result

    # -- expiry index and upkeep

    async def put_marker(self, name: str, key: str) -> None:
        await self._run(self.fs.pipe_file, self._path(name), key.encode("utf-8"))

    def _due_markers(self, upto_ms: int) -> list[tuple[str, str]]:
        base = self.root + "/"
        try:
            paths = sorted(self.fs.find(self._path(EXPIRY_DIR.rstrip("/"))))
        except FileNotFoundError:
            return []
        out: list[tuple[str, str]] = []
        for path in paths:
            if not path.startswith(base):
                continue
            name = path[len(base) :]
            when = marker_time(name)
            if when is None:
                continue
            if when > upto_ms:
                break
            try:
                out.append((name, bytes(self.fs.cat_file(path)).decode("utf-8")))
            except (FileNotFoundError, UnicodeDecodeError):
                continue
        return out

    async def due_markers(self, upto_ms: int) -> list[tuple[str, str]]:
        result: list[tuple[str, str]] = await self._run(self._due_markers, upto_ms)
        return result

    def _remove_marker(self, name: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))

    async def remove_marker(self, name: str) -> None:
        await self._run(self._remove_marker, name)

    def _clean_uploads(self, older_than_ms: int) -> int:
        removed = 0
        try:
            entries = self.fs.ls(self._path(TMP_DIR.rstrip("/")), detail=True)
        except FileNotFoundError:
            return 0
        for info in entries:
            if info.get("type") == "file" and _mtime_ms(info) < older_than_ms:
                with suppress(FileNotFoundError):
                    self.fs.rm_file(info["name"])
                    removed += 1
        return removed

    async def clean_uploads(self, older_than_ms: int) -> int:
        removed: int = await self._run(self._clean_uploads, older_than_ms)
        return removed

    async def aclose(self) -> None:
        return None


class _GenericReader:
    """Reads ranges of one object version; a version change mid-read is ``Conflict``."""

    def __init__(self, engine: GenericEngine, meta: Meta, offset: int, length: int | None) -> None:
        self._engine = engine
        self.meta = meta
        self._pos = min(offset, meta.size)
        self._end = meta.size if length is None else min(meta.size, offset + length)

    async def read_chunk(self, n: int) -> bytes:
        if self._pos >= self._end:
            return b""
        end = min(self._end, self._pos + n)
        chunk: bytes = await self._engine._run(self._engine._read_if, self.meta.key, self.meta.etag, self._pos, end)
        self._pos += len(chunk)
        if not chunk:
            self._pos = self._end
        return chunk

    async def aclose(self) -> None:
        return None
