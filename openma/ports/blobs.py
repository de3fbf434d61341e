"""The blob store: bytes too big for a row (spilled events, workspace snapshots, memory-store bytes, files).

The R2-like port. Keys are ``/``-separated paths; an adapter bound to a tenant prefixes them itself, so
callers never see (or forge) another tenant's keys.

Contract:

* **Keys** are 1-512 bytes of UTF-8, ``/``-separated segments. Refused with ``InvalidInput`` before any I/O:
  an empty key or segment (``a//b``, a leading or trailing ``/``), ``.`` or ``..`` segments, a backslash,
  control characters (C0, DEL, C1), a segment over 255 bytes, and the reserved first segment ``.openma``.
  Any other Unicode is fine and round-trips exactly.
* **put** takes ``bytes`` (or ``bytearray``/``memoryview``) or an async iterable of ``bytes`` chunks, which is
  consumed as it arrives: an adapter never holds a whole streamed object in memory. A put is atomic: readers
  see the old object or the new one, never a mix; a put that fails leaves the old one, and one cancelled
  mid-way either took effect whole or not at all.
  ``if_none_match="*"`` succeeds only if no live object has the key; ``if_match=etag`` only if the live
  object has that etag. A failed condition is ``Conflict`` and writes nothing; of two writers racing a
  conditional put on the same key, exactly one wins (across processes where the adapter declares
  ``multi_process``).
* **Etags** are opaque, unquoted strings that change on every put; compare them only for equality.
* **TTL**: ``ttl`` (seconds or a ``timedelta``) sets ``expires_at``. An expired object reads as ``NotFound``
  everywhere (``get``, ``head``, ``list``, ``if_match``) and counts as absent for ``if_none_match``, whether
  or not ``sweep_expired`` has deleted it yet. ``sweep_expired`` deletes expired objects and returns how many;
  ``expire(prefix, older_than)`` deletes every object under ``prefix`` created before ``older_than``
  (lifecycle rules) and returns how many.
* **Reads**: ``get`` returns the whole object; ``get_range(key, offset, length)`` returns the bytes from
  ``offset`` (clamped to the object: a range past the end is ``b""``); ``open_read`` streams an object in
  chunks from a consistent snapshot (a concurrent put never tears it: the reader either keeps the old bytes
  or fails with ``Conflict``). A missing (or expired) key is ``NotFound``.
* **delete** is idempotent.
* **list(prefix)** returns live objects whose key starts with ``prefix`` (a plain string prefix, not a
  pattern), ordered by key (code point order), ``limit`` (1-1000) at a time, with a keyset cursor. A cursor
  from another prefix, store or tenant, or one that does not decode, is ``InvalidInput``. A page may hold
  fewer than ``limit`` items; only ``next_cursor is None`` means the end.
* **Metadata** is a ``dict[str, str]`` of at most 1 KiB (JSON-encoded); content types are printable ASCII
  of at most 255 characters.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Literal, Protocol, TypeAlias

import attrs

from openma.models import Page

#: What ``put`` accepts: the whole object, or its chunks as they come.
BlobData: TypeAlias = bytes | bytearray | memoryview | AsyncIterable[bytes]
#: A time to live: seconds, or a ``timedelta``.
TTL: TypeAlias = float | int | timedelta

DEFAULT_CONTENT_TYPE = "application/octet-stream"
DEFAULT_CHUNK_SIZE = 1 << 20


@attrs.frozen
class BlobInfo:
    """What a blob store knows about one object (without its bytes)."""

    key: str
    size: int
    etag: str
    content_type: str
    metadata: dict[str, str]
    created_at: datetime
    expires_at: datetime | None = None


class BlobReader(Protocol):
    """An open object: its ``info`` and its bytes, read in chunks (``async for``) or with ``read``."""

    @property
    def info(self) -> BlobInfo: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n < 0``); ``b""`` at the end."""
        ...


class BlobStore(Protocol):
    """An R2-like object store (see the module docstring for the contract)."""

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
    ) -> BlobInfo: ...

    async def get(self, key: str) -> bytes: ...

    async def get_range(self, key: str, offset: int, length: int | None = None) -> bytes: ...

    def open_read(
        self, key: str, *, offset: int = 0, length: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[BlobReader]:
        """Stream an object: ``async with store.open_read(key) as r: async for chunk in r: ...``."""
        ...

    async def head(self, key: str) -> BlobInfo: ...

    async def delete(self, key: str) -> None: ...

    async def list(self, prefix: str = "", *, cursor: str | None = None, limit: int = 100) -> Page[BlobInfo]: ...

    async def sweep_expired(self) -> int: ...

    async def expire(self, prefix: str, older_than: datetime) -> int: ...
