"""A tenant's view of any blob store: every key under ``t/<tenant_id>/``, openma's own area out of reach.

The platform keeps one :class:`~openma.ports.blobs.BlobStore` for everything (``oma.blobs``) and gives each
tenant :func:`tenant_view` of it (``t.blobs``). The view only uses the port, so any store that passes
``openma.testing.BlobStoreContract`` works behind it:

* a key is checked for its scope first, then prefixed with ``t/<tenant_id>/``; the prefix is stripped from
  every key that comes back (``BlobInfo.key``, a reader's ``info``), so a tenant can neither see nor name
  another tenant's keys;
* the **tenant** view refuses (``InvalidInput``) every key and list prefix in openma's area of the tenant
  (first segment ``.openma``, or ``sessions`` where older releases spilled events; see
  :mod:`openma.core.keys`), and leaves those objects out of its lists and of ``expire``;
* the **internal** view (``internal=True``, for openma's own writers: spilled events, snapshots) may name
  that area, and offers ``legacy_snapshots``: the tenant's snapshots at their pre-tenant location;
* list cursors are bound to the view and the prefix: a cursor of another tenant or prefix is ``InvalidInput``;
* ``ensure`` (the platform passes its tenant check) runs before each put, after the arguments are checked,
  so a mistyped tenant id leaves no orphan objects and bad input fails first.

A store may give its own views with a ``for_tenant(tenant_id, *, ensure=None, internal=False)`` method (the
fsspec store does: it filters at the engine and sweeps one tenant's expiry index); :func:`tenant_view` uses
it when present. Without one, a view's ``sweep_expired`` sweeps the whole store (expired objects are
invisible to every view anyway) and returns the count of the whole store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Final, Literal, TypeAlias

import attrs

from openma.core import keys
from openma.core.ids import check_id
from openma.core.pagination import check_limit, scope_of
from openma.errors import ConfigError, InvalidInput
from openma.models import Page
from openma.ports.blobs import DEFAULT_CHUNK_SIZE, DEFAULT_CONTENT_TYPE, TTL, BlobData, BlobInfo, BlobReader, BlobStore

__all__ = ["PrefixedBlobs", "tenant_view"]

#: ``root``: keys as the whole store takes them; ``tenant``: a tenant's own keys; ``internal``: and its ``.openma/``.
Scope: TypeAlias = Literal["root", "tenant", "internal"]
Ensure: TypeAlias = Callable[[], Awaitable[None]]

MAX_LIST_LIMIT: Final = 1000
_MAX_CURSOR_CHARS: Final = 8192


def tenant_view(store: BlobStore, tenant_id: str, *, ensure: Ensure | None = None, internal: bool = False) -> BlobStore:
    """``store`` seen by one tenant (see the module docstring); the store's own ``for_tenant`` if it has one."""
    check_id(tenant_id, "tnt", what="tenant_id")
    native = getattr(store, "for_tenant", None)
    if callable(native):
        view: BlobStore = native(tenant_id, ensure=ensure, internal=internal)
        return view
    return PrefixedBlobs.for_tenant_of(store, tenant_id, ensure=ensure, internal=internal)


class _Reader:
    """A reader of the inner store with the view's prefix stripped from its ``info``."""

    def __init__(self, inner: BlobReader, strip: int) -> None:
        self._inner = inner
        self.info: BlobInfo = attrs.evolve(inner.info, key=inner.info.key[strip:])

    def __repr__(self) -> str:
        return f"BlobReader({self.info.key!r}, size={self.info.size})"

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()

    async def read(self, n: int = -1) -> bytes:
        return await self._inner.read(n)


class PrefixedBlobs:
    """A :class:`~openma.ports.blobs.BlobStore` that is the part of another one under ``prefix``."""

    def __init__(self, store: BlobStore, prefix: str, *, scope: Scope = "root", ensure: Ensure | None = None) -> None:
        if isinstance(store, PrefixedBlobs):
            raise ConfigError("a prefixed blob view is made from the whole store, not from another view")
        self._store = store
        self._prefix = prefix
        self._scope: Scope = scope
        self._ensure = ensure
        #: On an internal view: the tenant's snapshots at their pre-tenant location (read and swept, never written).
        self.legacy_snapshots: PrefixedBlobs | None = None

    @classmethod
    def for_tenant_of(
        cls, store: BlobStore, tenant_id: str, *, ensure: Ensure | None = None, internal: bool = False
    ) -> PrefixedBlobs:
        """The tenant (or, with ``internal``, the internal) view of ``tenant_id`` over the whole ``store``."""
        check_id(tenant_id, "tnt", what="tenant_id")
        scope: Scope = "internal" if internal else "tenant"
        view = cls(store, keys.tenant_root(tenant_id), scope=scope, ensure=ensure)
        if internal:
            view.legacy_snapshots = cls(store, keys.legacy_snapshot_root_prefix(tenant_id))
        return view

    def __repr__(self) -> str:
        return f"PrefixedBlobs({self._store!r}, prefix={self._prefix!r}, scope={self._scope!r})"

    # -- keys

    def _full(self, key: object) -> str:
        return self._prefix + keys.view_key(self._scope, key)

    def _list_prefix(self, prefix: object) -> str:
        return keys.view_list_prefix(self._scope, prefix)

    def _visible(self, info: BlobInfo) -> bool:
        """Whether an object of the inner store belongs to this view (a tenant view skips the reserved areas)."""
        return keys.view_shows(self._scope, info.key[len(self._prefix) :])

    def _strip(self, info: BlobInfo) -> BlobInfo:
        return attrs.evolve(info, key=info.key[len(self._prefix) :])

    # -- the port

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
        keys.content_type(content_type, DEFAULT_CONTENT_TYPE)  # bad input fails before the tenant check
        keys.blob_metadata(metadata)
        keys.ttl_ms(ttl)
        if if_none_match not in (None, "*"):
            raise InvalidInput("if_none_match must be '*' or None", field="if_none_match")
        if if_match is not None and (not isinstance(if_match, str) or not if_match):
            raise InvalidInput("if_match must be an etag string", field="if_match")
        if not isinstance(data, bytes | bytearray | memoryview) and not hasattr(data, "__aiter__"):
            raise InvalidInput("data must be bytes or an async iterable of bytes chunks", field="data")
        if self._ensure is not None:
            await self._ensure()
        info = await self._store.put(
            full,
            data,
            content_type=content_type,
            metadata=metadata,
            ttl=ttl,
            if_none_match=if_none_match,
            if_match=if_match,
        )
        return self._strip(info)

    async def get(self, key: str) -> bytes:
        return await self._store.get(self._full(key))

    async def get_range(self, key: str, offset: int, length: int | None = None) -> bytes:
        return await self._store.get_range(self._full(key), offset, length)

    @asynccontextmanager
    async def open_read(
        self, key: str, *, offset: int = 0, length: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[BlobReader]:
        full = self._full(key)
        async with self._store.open_read(full, offset=offset, length=length, chunk_size=chunk_size) as reader:
            yield _Reader(reader, len(self._prefix))

    async def head(self, key: str) -> BlobInfo:
        return self._strip(await self._store.head(self._full(key)))

    async def delete(self, key: str) -> None:
        await self._store.delete(self._full(key))

    async def list(self, prefix: str = "", *, cursor: str | None = None, limit: int = 100) -> Page[BlobInfo]:
        """Pages of the inner store's list under the view's prefix, reserved objects left out.

        A page is never empty unless it is the last one; it may hold fewer than ``limit`` items.
        """
        prefix = self._list_prefix(prefix)
        limit = check_limit(limit, maximum=MAX_LIST_LIMIT)
        scope = scope_of("prefixed-blobs", self._prefix, self._scope, prefix)
        inner: str | None = None if cursor is None else _decode_cursor(cursor, scope)
        while True:
            page = await self._store.list(self._prefix + prefix, cursor=inner, limit=limit)
            items = [self._strip(i) for i in page.items if self._visible(i)]
            inner = page.next_cursor
            if items or inner is None:
                return Page(items, None if inner is None else _encode_cursor(scope, inner))

    async def sweep_expired(self) -> int:
        """Delete expired objects of the whole inner store (the port sweeps no narrower); return how many."""
        return await self._store.sweep_expired()

    async def expire(self, prefix: str, older_than: datetime) -> int:
        """Delete every object of the view under ``prefix`` created before ``older_than``; return how many."""
        prefix = self._list_prefix(prefix)
        if not isinstance(older_than, datetime) or older_than.tzinfo is None:
            raise InvalidInput("older_than must be a timezone-aware datetime", field="older_than")
        if self._scope != "tenant":
            return await self._store.expire(self._prefix + prefix, older_than)
        removed = 0
        cursor: str | None = None
        while True:  # a tenant view walks its objects, so that openma's area of the tenant is left alone
            page = await self._store.list(self._prefix + prefix, cursor=cursor, limit=MAX_LIST_LIMIT)
            for info in page.items:
                if info.created_at < older_than and self._visible(info):
                    await self._store.delete(info.key)
                    removed += 1
            cursor = page.next_cursor
            if cursor is None:
                return removed


def _encode_cursor(scope: str, inner: str) -> str:
    return keys.encode_scoped_cursor(scope, inner, field="c")


def _decode_cursor(cursor: object, scope: str) -> str:
    """The inner store's cursor, or ``InvalidInput`` for a malformed cursor or one of another list."""
    return keys.decode_scoped_cursor(cursor, scope, field="c", max_chars=_MAX_CURSOR_CHARS)
