"""The blob store on fsspec: one class for any fsspec URL (``file://``, ``memory://``, ``s3://`` and R2/MinIO).

``FsspecBlobStore`` validates every input, keeps TTL bookkeeping, pages lists with keyset cursors and
prefixes tenant keys; an *engine* underneath stores the objects:

* ``file://`` → :mod:`.local`: plain files, temp file + fsync + rename, ``flock`` locks that hold across
  processes;
* ``s3://`` → :mod:`.s3`: S3's own conditional writes, native metadata, multipart streaming;
* anything else (``memory://``, ``gcs://``, ...) → :mod:`.generic`: fsspec calls in worker threads,
  conditions exact within one process.

Expiry: a put with a TTL also writes a small entry in an expiry index (``.openma/expiry/<ms>/...``), so
``sweep_expired`` reads only what is due instead of every object. Objects are checked against their
expiry on every read, so the sweep only reclaims space.

The platform gives each tenant ``store.for_tenant(tenant_id)``: the same store with every key under
``t/<tenant_id>/``. The prefix is added after validation and stripped from what is returned, so a tenant
can neither see nor name another tenant's keys. The tenant view also refuses (``InvalidInput``) every key
and list prefix in openma's internal area of the tenant (``.openma/...``, and the old spill area
``sessions/...``; see :mod:`openma.core.keys`), and leaves those objects out of its lists, so a tenant
cannot read, overwrite, list or delete its spilled events or snapshots. openma's own writers use
``for_tenant(tenant_id, internal=True)``, which may name them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias

from openma.adapters.fsspec_blobs._common import (
    STALE_UPLOAD_MS,
    Engine,
    Meta,
    Reader,
    WriteSpec,
    as_source,
    marker_name,
)
from openma.core import keys as check
from openma.core.clock import Clock, SystemClock
from openma.core.ids import check_id
from openma.core.pagination import check_limit, scope_of
from openma.errors import ConfigError, InvalidInput, NotFound, OpenmaError
from openma.models import Page
from openma.ports.blobs import DEFAULT_CHUNK_SIZE, DEFAULT_CONTENT_TYPE, TTL, BlobData, BlobInfo
from openma.settings import Settings

MAX_LIST_LIMIT: Final = 1000
MAX_CHUNK_SIZE: Final = 64 << 20
TENANT_ROOT: Final = check.TENANT_ROOT
#: ``root``: the whole store; ``tenant``: a tenant's own keys; ``internal``: a tenant's keys and its ``.openma/``.
Scope: TypeAlias = Literal["root", "tenant", "internal"]
#: Largest offset or length a read takes (any real object is smaller; larger values overflow the OS calls).
MAX_OFFSET: Final = 2**62


def _offset(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OFFSET:
        raise InvalidInput(f"{what} must be an integer between 0 and {MAX_OFFSET}", field=what)
    return value


def _length(value: object) -> int | None:
    return None if value is None else _offset(value, "length")


def _etag(value: object) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 256
        or not value.isascii()
        or check._CONTROL.search(value)
    ):
        raise InvalidInput("if_match must be an etag string (printable ASCII)", field="if_match")
    return value.strip('"')


class FsspecBlobReader:
    """What ``open_read`` yields: ``info``, ``async for chunk in reader``, and ``await reader.read(n)``."""

    def __init__(self, reader: Reader, strip: int, chunk_size: int) -> None:
        self._reader = reader
        self.info: BlobInfo = reader.meta.info(strip)
        self._chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"BlobReader({self.info.key!r}, size={self.info.size})"

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._reader.read_chunk(self._chunk_size):
            yield chunk

    async def read(self, n: int = -1) -> bytes:
        if n >= 0:
            return await self._reader.read_chunk(n) if n else b""
        parts = []
        while chunk := await self._reader.read_chunk(self._chunk_size):
            parts.append(chunk)
        return b"".join(parts)


class FsspecBlobStore:
    """A :class:`~openma.ports.blobs.BlobStore` on any fsspec URL (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock | None = None,
        prefix: str = "",
        ensure: Callable[[], Awaitable[None]] | None = None,
        scope: Scope = "root",
    ) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()
        self._prefix = prefix
        self._ensure = ensure
        self._scope: Scope = scope
        #: On an internal view: the tenant's snapshots at their pre-tenant location (read and swept, never written).
        self.legacy_snapshots: FsspecBlobStore | None = None
        #: The conformance-kit capabilities this store has (they depend on the URL's engine).
        self.capabilities: frozenset[str] = engine.capabilities

    def __repr__(self) -> str:
        scope = f", prefix={self._prefix!r}" if self._prefix else ""
        return f"FsspecBlobStore({self._engine.identity!r}{scope})"

    # -- opening

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        storage_options: dict[str, Any] | None = None,
        clock: Clock | None = None,
        **engine_options: Any,
    ) -> FsspecBlobStore:
        """Open the store at ``url`` and check that it is usable (the root can be made, the bucket exists).

        A URL that cannot work (not a string, NUL or other control characters, a lone surrogate, an unknown or
        read-only filesystem, a server that refuses the connection) is :class:`ConfigError` naming
        ``blob_url``; an outage the store reports itself stays :class:`StorageUnavailable`.
        """
        store = cls(_engine(url, dict(storage_options or {}), engine_options), clock=clock)
        await store.setup()
        return store

    async def setup(self) -> None:
        """Make the store's root and bookkeeping directories (``open`` does it; idempotent)."""
        try:
            await self._engine.setup()
        except OpenmaError:
            await self._engine.aclose()
            raise
        except Exception as exc:
            await self._engine.aclose()
            url = self._engine.identity
            raise ConfigError(f"blob_url {url!r} cannot be opened: {type(exc).__name__}: {exc}") from None

    @classmethod
    async def from_settings(
        cls, settings: Settings, *, clock: Clock | None = None, setup: bool = True
    ) -> FsspecBlobStore:
        """Open ``settings.blob_url`` with the S3 settings and ``blob_options`` as storage options.

        With ``setup=False`` the URL is only checked (nothing is created); call :meth:`setup` before use.
        """
        options = storage_options(settings)
        if setup:
            return await cls.open(settings.blob_url, storage_options=options, clock=clock)
        return cls(_engine(settings.blob_url, dict(options), {}), clock=clock)

    def for_tenant(
        self,
        tenant_id: str,
        *,
        ensure: Callable[[], Awaitable[None]] | None = None,
        internal: bool = False,
    ) -> FsspecBlobStore:
        """This store seen by one tenant: every key lives under ``t/<tenant_id>/``.

        ``ensure`` (the platform passes its tenant check) runs before each put, so a mistyped tenant id
        cannot leave orphan objects. The view refuses openma's internal area of the tenant unless
        ``internal`` (for openma's own writers: the event log's spills, snapshots).
        """
        check_id(tenant_id, "tnt", what="tenant_id")
        if self._scope != "root":
            raise ConfigError("for_tenant is only available on the whole store")
        prefix = f"{self._prefix}{check.tenant_root(tenant_id)}"
        view = FsspecBlobStore(
            self._engine, clock=self._clock, prefix=prefix, ensure=ensure, scope="internal" if internal else "tenant"
        )
        if internal:
            legacy = f"{self._prefix}{check.legacy_snapshot_root_prefix(tenant_id)}"
            view.legacy_snapshots = FsspecBlobStore(self._engine, clock=self._clock, prefix=legacy)
        return view

    async def aclose(self) -> None:
        if not self._prefix:
            await self._engine.aclose()

    # -- the port

    def _full(self, key: object) -> str:
        return self._prefix + check.view_key(self._scope, key)

    def _list_prefix(self, prefix: object) -> str:
        return check.view_list_prefix(self._scope, prefix)

    def _visible(self, meta: Meta) -> bool:
        """Whether an object found by a scan belongs to this view (a tenant view skips the reserved areas)."""
        return check.view_shows(self._scope, meta.key[len(self._prefix) :])

    async def put(
        self,
        key: str,
        data: BlobData,
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        ttl: TTL | None = None,
        if_none_match: Literal["*"] | None = None,
        if_match: str | None = None,
    ) -> BlobInfo:
        full = self._full(key)
        ctype = check.content_type(content_type, DEFAULT_CONTENT_TYPE)
        meta = check.blob_metadata(metadata)
        ttl_ms = check.ttl_ms(ttl)
        if if_none_match not in (None, "*"):
            raise InvalidInput("if_none_match must be '*' or None", field="if_none_match")
        etag = None if if_match is None else _etag(if_match)
        if if_none_match and etag is not None:
            raise InvalidInput("pass if_none_match or if_match, not both", field="if_match")
        source = as_source(data)
        if self._ensure is not None:
            await self._ensure()
        now = self._clock.now_ms()
        expires = None if ttl_ms is None else now + ttl_ms
        if expires is not None:
            await self._engine.put_marker(marker_name(expires, full), full)
        spec = WriteSpec(full, ctype, meta, now, expires, if_none_match=if_none_match == "*", if_match=etag)
        written = await self._engine.write(spec, source, now)
        return written.info(len(self._prefix))

    def _live(self, meta: Meta | None, key: str) -> Meta:
        if meta is None or not meta.live(self._clock.now_ms()):
            raise NotFound(f"blob {key!r} not found", key=key)
        return meta

    async def head(self, key: str) -> BlobInfo:
        full = self._full(key)
        return self._live(await self._engine.stat(full), key).info(len(self._prefix))

    async def get(self, key: str) -> bytes:
        return await self.get_range(key, 0)

    async def get_range(self, key: str, offset: int, length: int | None = None) -> bytes:
        full = self._full(key)
        offset = _offset(offset, "offset")
        length = _length(length)
        got = await self._engine.read(full, offset, length)
        self._live(None if got is None else got[0], key)
        assert got is not None
        return got[1]

    @asynccontextmanager
    async def open_read(
        self, key: str, *, offset: int = 0, length: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[FsspecBlobReader]:
        full = self._full(key)
        offset = _offset(offset, "offset")
        length = _length(length)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidInput(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}", field="chunk_size")
        async with self._engine.open(full, offset, length) as reader:
            self._live(None if reader is None else reader.meta, key)
            assert reader is not None
            yield FsspecBlobReader(reader, len(self._prefix), chunk_size)

    async def delete(self, key: str) -> None:
        await self._engine.remove(self._full(key))

    async def list(self, prefix: str = "", *, cursor: str | None = None, limit: int = 100) -> Page[BlobInfo]:
        prefix = self._list_prefix(prefix)
        limit = check_limit(limit, maximum=MAX_LIST_LIMIT)
        scope = scope_of("blobs", self._engine.identity, self._prefix, prefix)
        after = self._prefix + check.decode_key_cursor(cursor, scope) if cursor is not None else ""
        found: list[Meta] = []
        while len(found) <= limit:
            batch, after, done = await self._engine.scan(self._prefix + prefix, after, limit + 1 - len(found))
            now = self._clock.now_ms()
            found += [m for m in batch if m.live(now) and self._visible(m)]
            if done:
                break
        strip = len(self._prefix)
        page = found[:limit]
        next_cursor = check.encode_key_cursor(scope, page[-1].key[strip:]) if len(found) > limit else None
        return Page([m.info(strip) for m in page], next_cursor)

    async def sweep_expired(self) -> int:
        """Delete this store's expired objects (and, at the root, uploads abandoned by crashed puts)."""
        now = self._clock.now_ms()
        removed = 0
        for name, key in await self._engine.due_markers(now):
            if not key.startswith(self._prefix):
                continue  # another tenant's: its own sweep (or the root's) handles it
            meta = await self._engine.stat(key)
            if meta is not None and meta.expires_ms is not None and meta.expires_ms <= now:
                removed += await self._engine.remove(key, if_etag=meta.etag)
            await self._engine.remove_marker(name)
        if not self._prefix:
            await self._engine.clean_uploads(now - STALE_UPLOAD_MS)
        return removed

    async def expire(self, prefix: str, older_than: datetime) -> int:
        """Delete every object under ``prefix`` created before ``older_than``; return how many."""
        prefix = self._list_prefix(prefix)
        if not isinstance(older_than, datetime) or older_than.tzinfo is None:
            raise InvalidInput("older_than must be a timezone-aware datetime", field="older_than")
        cutoff = int(older_than.timestamp() * 1000)
        removed = 0
        after = ""
        while True:
            batch, after, done = await self._engine.scan(self._prefix + prefix, after, MAX_LIST_LIMIT)
            for meta in batch:
                if meta.created_ms < cutoff and self._visible(meta):
                    removed += await self._engine.remove(meta.key, if_etag=meta.etag)
            if done:
                return removed


async def open_blob_store(settings: Settings) -> FsspecBlobStore:
    """The ``fsspec`` entry of :data:`openma.registry.blob_stores`: ``settings.blob_url``, checked, not set up.

    The platform calls :meth:`FsspecBlobStore.setup` once its store backends are open, so a bad URL fails
    before any database file is created.
    """
    return await FsspecBlobStore.from_settings(settings, setup=False)


def storage_options(settings: Settings) -> dict[str, Any]:
    """fsspec storage options for ``settings.blob_url``: the S3 settings, then ``blob_options`` on top."""
    options: dict[str, Any] = {}
    if settings.blob_url.startswith(("s3://", "s3a://")):
        client_kwargs: dict[str, Any] = {}
        if settings.s3_endpoint_url:
            options["endpoint_url"] = settings.s3_endpoint_url
        if settings.s3_region:
            client_kwargs["region_name"] = settings.s3_region
        if settings.s3_access_key_id:
            options["key"] = settings.s3_access_key_id
        if settings.s3_secret_access_key:
            options["secret"] = settings.s3_secret_access_key
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
    options.update(settings.blob_options)
    return options


def _check_url(url: object) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"blob_url must be an fsspec URL such as file://./.openma/blobs, got {url!r}")
    if check._CONTROL.search(url):
        raise ConfigError(f"blob_url {url!r} contains a control character (NUL, newline, ...)")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"blob_url {url!r} is not valid Unicode (it holds a lone surrogate)") from None
    return url


def _engine(url: str, options: dict[str, Any], engine_options: dict[str, Any]) -> Engine:
    url = _check_url(url)
    protocol = url.split("://", 1)[0].lower()
    if protocol in ("file", "local"):
        try:
            from openma.adapters.fsspec_blobs.local import LocalEngine
        except ImportError as exc:  # no fcntl: not a POSIX system
            raise ConfigError(f"file:// blob stores need POSIX file locks (fcntl.flock): {exc}") from exc

        if options or engine_options:
            raise ConfigError(f"file:// blob stores take no options, got {sorted({**options, **engine_options})}")
        return LocalEngine(url.split("://", 1)[1] or ".")
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is a core dependency
        raise ConfigError("fsspec is not installed; install it with: pip install fsspec") from exc
    if protocol in ("s3", "s3a"):
        try:
            import s3fs  # noqa: F401
        except ImportError as exc:
            raise ConfigError("s3:// blob stores need s3fs; install it with: pip install 'openma[s3]'") from exc
        # The engine lists with keyset calls of its own; s3fs's listing cache would only serve stale pages.
        # Instances stay cached by fsspec (keyed by these options): they run on fsspec's own I/O loop, so
        # one is safely shared by every store, event loop and thread of the process.
        options.setdefault("use_listings_cache", False)
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise ConfigError(f"blob_url {url!r} needs a filesystem that is not installed: {exc}") from exc
    except Exception as exc:  # a bad path (zip://, tar://), missing arguments, a refused connection (ftp://)
        raise ConfigError(f"blob_url {url!r} cannot be opened: {type(exc).__name__}: {exc}") from exc
    if protocol in ("s3", "s3a"):
        from openma.adapters.fsspec_blobs.s3 import S3Engine

        return S3Engine(fs, root, **engine_options)
    from openma.adapters.fsspec_blobs.generic import GenericEngine

    if engine_options:
        raise ConfigError(f"unknown blob engine options {sorted(engine_options)}")
    return GenericEngine(fs, root)


__all__ = ["FsspecBlobReader", "FsspecBlobStore", "open_blob_store", "storage_options"]
