"""What the blob engines share: the object record, the sidecar codec, input sources and the reader shape.

An *engine* stores objects under full keys (already validated, tenant prefix included) and applies put
conditions atomically, counting an expired object as absent. The facade
(:class:`~openma.adapters.fsspec_blobs.FsspecBlobStore`) does everything else: validation, tenant
prefixes, TTL bookkeeping, list pages and cursors.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import attrs

from openma.core.clock import ms_to_datetime
from openma.core.keys import RESERVED_SEGMENT
from openma.errors import InvalidInput
from openma.ports.blobs import BlobInfo

#: Where engines keep their own files: sidecar records, staged uploads, locks, the expiry index.
INTERNAL: Final = RESERVED_SEGMENT + "/"
META_DIR: Final = INTERNAL + "meta/"
TMP_DIR: Final = INTERNAL + "tmp/"
LOCK_DIR: Final = INTERNAL + "locks/"
EXPIRY_DIR: Final = INTERNAL + "expiry/"
#: Staged uploads older than this are debris of a crashed put, removed by ``sweep_expired``.
STALE_UPLOAD_MS: Final = 24 * 3600 * 1000
#: Writes from an async stream are gathered into pieces of about this size before each thread hop.
WRITE_PIECE: Final = 1 << 20


@attrs.frozen
class Meta:
    """One stored object, as an engine knows it (full key, times in Unix ms)."""

    key: str
    size: int
    etag: str
    content_type: str
    metadata: dict[str, str]
    created_ms: int
    expires_ms: int | None = None

    def live(self, now_ms: int) -> bool:
        return self.expires_ms is None or self.expires_ms > now_ms

    def info(self, strip: int = 0) -> BlobInfo:
        return BlobInfo(
            key=self.key[strip:],
            size=self.size,
            etag=self.etag,
            content_type=self.content_type,
            metadata=dict(self.metadata),
            created_at=ms_to_datetime(self.created_ms),
            expires_at=ms_to_datetime(self.expires_ms) if self.expires_ms is not None else None,
        )


@attrs.frozen
class WriteSpec:
    """What a put asks of an engine."""

    key: str
    content_type: str
    metadata: dict[str, str]
    created_ms: int
    expires_ms: int | None
    if_none_match: bool = False
    if_match: str | None = None


def new_etag() -> str:
    """Engines without native etags mint a random one per put: free, unlike hashing the bytes."""
    return secrets.token_hex(16)


def encode_record(meta: Meta, **extra: Any) -> bytes:
    """The sidecar record of ``meta`` (plus engine fields, such as the staged file's inode)."""
    record = {
        "v": 1,
        "etag": meta.etag,
        "size": meta.size,
        "ct": meta.content_type,
        "md": meta.metadata,
        "c": meta.created_ms,
        "x": meta.expires_ms,
        **extra,
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_record(key: str, raw: bytes) -> tuple[Meta, dict[str, Any]] | None:
    """Parse a sidecar record; ``None`` if it is not one (a torn or foreign file)."""
    try:
        record = json.loads(raw)
        meta = Meta(
            key=key,
            size=int(record["size"]),
            etag=str(record["etag"]),
            content_type=str(record["ct"]),
            metadata={str(k): str(v) for k, v in record["md"].items()},
            created_ms=int(record["c"]),
            expires_ms=int(record["x"]) if record["x"] is not None else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta, record


def marker_name(expires_ms: int, key: str) -> str:
    """The expiry index entry of ``key``: sorted by time, one per (time, key)."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"{EXPIRY_DIR}{expires_ms:013d}/{digest}"


def marker_time(name: str) -> int | None:
    """The expiry time encoded in a marker name (relative to the store root), or ``None``."""
    if not name.startswith(EXPIRY_DIR):
        return None
    stamp = name[len(EXPIRY_DIR) :].split("/", 1)[0]
    return int(stamp) if stamp.isascii() and stamp.isdigit() else None


Source = bytes | AsyncIterator[bytes]


def as_source(data: object) -> Source:
    """``bytes`` as they are, an async iterable as its iterator; anything else is ``InvalidInput``."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if isinstance(data, AsyncIterable):
        return _checked(aiter(data))
    raise InvalidInput(f"data must be bytes or an async iterable of bytes, got {type(data).__name__}", field="data")


async def _checked(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if isinstance(chunk, bytes):
            yield chunk
        elif isinstance(chunk, bytearray | memoryview):
            yield bytes(chunk)
        else:
            raise InvalidInput(f"data chunks must be bytes, got {type(chunk).__name__}", field="data")


async def pieces(source: AsyncIterator[bytes], size: int = WRITE_PIECE) -> AsyncIterator[bytes]:
    """Regroup a stream into pieces of at least ``size`` bytes (the last may be shorter, never empty)."""
    buf: list[bytes] = []
    held = 0
    async for chunk in source:
        if not chunk:
            continue
        buf.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(buf)
            buf, held = [], 0
    if held:
        yield b"".join(buf)


class Reader(Protocol):
    """An engine's open object: a consistent snapshot read in pieces."""

    meta: Meta

    async def read_chunk(self, n: int) -> bytes:
        """Up to ``n`` bytes of the selected range; ``b""`` at its end."""
        ...

    async def aclose(self) -> None: ...


class Engine(Protocol):
    """One storage family behind the facade."""

    #: What the facade puts in cursor fingerprints, so a cursor cannot move between stores.
    identity: str

    @property
    def capabilities(self) -> frozenset[str]: ...

    async def setup(self) -> None:
        """Check that the store can be used (the root exists or can be made, the bucket exists)."""
        ...

    async def write(self, spec: WriteSpec, source: Source, now_ms: int) -> Meta: ...

    async def stat(self, key: str) -> Meta | None:
        """The object's record, expired or not; ``None`` if there is none."""
        ...

    async def read(self, key: str, offset: int, length: int | None) -> tuple[Meta, bytes] | None:
        """The record and the selected bytes, from one snapshot; ``None`` if there is no object."""
        ...

    def open(self, key: str, offset: int, length: int | None) -> AbstractAsyncContextManager[Reader | None]: ...

    async def remove(self, key: str, if_etag: str | None = None) -> bool:
        """Delete the object (only if its etag is ``if_etag``, when given); whether one was deleted."""
        ...

    async def scan(self, prefix: str, after: str, limit: int) -> tuple[list[Meta], str, bool]:
        """Up to ``limit`` objects with keys starting with ``prefix`` and greater than ``after``, in key
        order, expired ones included. Returns them, the last key looked at, and whether the scan is done."""
        ...

    async def put_marker(self, name: str, key: str) -> None: ...

    async def due_markers(self, upto_ms: int) -> list[tuple[str, str]]:
        """Expiry index entries due at ``upto_ms``: ``(marker name, key)``, oldest first."""
        ...

    async def remove_marker(self, name: str) -> None: ...

    async def clean_uploads(self, older_than_ms: int) -> int:
        """Remove staged uploads abandoned before ``older_than_ms`` (a crashed put's debris)."""
        ...

    async def aclose(self) -> None: ...
