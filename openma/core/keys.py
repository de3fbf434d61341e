"""Checks for blob and KV keys, TTLs and blob metadata (``InvalidInput`` before any I/O), and the blob layout.

Blob keys become file paths on ``file://``, so they are held to the rules that keep a path inside its
root on every filesystem; KV keys are only ever SQL parameters, so they need fewer rules.

**Blob layout** (keys of the platform's whole store)::

    .openma/...                              the blob adapter's own bookkeeping (meta, expiry index, tmp)
    t/<tenant>/<user key>                    what the tenant stores through ``t.blobs``
    t/<tenant>/.openma/sessions/<session>/   spilled events of a session
    t/<tenant>/.openma/snapshots/<session>/  workspace snapshots of a session: ``snp_<id>.tar.gz`` each, and
                                             ``latest.json`` (the ref of the latest one)

Everything openma writes for a tenant lives under the tenant's ``.openma/`` area, which no key of the
tenant view can name (a first segment ``.openma`` is refused everywhere). Two older locations are still
read, never written: spills at ``t/<tenant>/sessions/<session>/`` (so ``sessions`` is reserved in the tenant
view too) and snapshots at ``sandbox-snapshots/<tenant>/<session>/`` (outside every tenant view).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import unicodedata
from datetime import timedelta
from typing import Final

from openma.core.ids import new_id
from openma.core.jsonutil import dumps
from openma.errors import InvalidInput

MAX_KEY_BYTES: Final = 512
MAX_SEGMENT_BYTES: Final = 255
MAX_BLOB_METADATA_BYTES: Final = 1024
MAX_CONTENT_TYPE: Final = 255
#: Longest accepted TTL (ten years, in seconds).
MAX_TTL_SECONDS: Final = 10 * 366 * 24 * 3600
#: The first key segment that blob adapters keep for their own bookkeeping.
RESERVED_SEGMENT: Final = ".openma"
#: Where each tenant's keys live in the platform's store: ``t/<tenant_id>/``.
TENANT_ROOT: Final = "t/"
#: First segments a tenant's own keys may not use: openma's internal area, and where spills used to go.
TENANT_RESERVED: Final = frozenset({RESERVED_SEGMENT, "sessions"})
#: Where snapshots went before they moved under the tenant (read for restores, never written).
LEGACY_SNAPSHOT_ROOT: Final = "sandbox-snapshots/"
#: Where a tenant's snapshots live, relative to its internal view.
SNAPSHOT_AREA: Final = f"{RESERVED_SEGMENT}/snapshots/"
#: The name of a session's latest-snapshot record, next to its snapshots.
LATEST_SNAPSHOT: Final = "latest.json"

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTENT_TYPE: Final = re.compile(r"^[\x21-\x7e][\x20-\x7e]*$")


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _utf8_len(value: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode (lone surrogate)", field=what) from None


def kv_key(key: object, what: str = "key") -> str:
    if not isinstance(key, str):
        raise InvalidInput(f"{what} must be a string, got {type(key).__name__}", field=what)
    size = _utf8_len(key, what)
    if size == 0:
        raise InvalidInput(f"{what} must not be empty", field=what)
    if size > MAX_KEY_BYTES:
        raise InvalidInput(f"{what} is too long ({size} > {MAX_KEY_BYTES} bytes)", field=what)
    if _CONTROL.search(key):
        raise InvalidInput(f"{what} {_show(key)} contains a control character", field=what)
    return key


def key_prefix(prefix: object, what: str = "prefix") -> str:
    """A list prefix: like a key, but may be empty."""
    if prefix == "":
        return ""
    return kv_key(prefix, what)


def blob_key(key: object, what: str = "key") -> str:
    """A blob key: a relative ``/``-separated path that cannot escape its root on any filesystem."""
    key = kv_key(key, what)
    if "\\" in key:
        raise InvalidInput(f"{what} {_show(key)} contains a backslash", field=what)
    if key.startswith("/"):
        raise InvalidInput(f"{what} {_show(key)} is absolute; keys are relative paths", field=what)
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidInput(f"{what} {_show(key)} has an empty, '.' or '..' segment (or a trailing '/')", field=what)
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidInput(f"{what} has a segment over {MAX_SEGMENT_BYTES} bytes", field=what)
    if _fold(segments[0]) == RESERVED_SEGMENT:
        raise InvalidInput(f"{what} {_show(key)} uses the reserved segment {RESERVED_SEGMENT!r}", field=what)
    return key


def _fold(segment: str) -> str:
    """A segment as a case-insensitive, normalization-insensitive filesystem (APFS, NTFS) may see it."""
    return unicodedata.normalize("NFKC", segment).casefold()


def tenant_reserved(key: str) -> bool:
    """Whether a key of a tenant view names openma's internal area (or the old spill area)."""
    return _fold(key.split("/", 1)[0]) in TENANT_RESERVED


def tenant_blob_key(key: object, what: str = "key") -> str:
    """A key of a tenant's own blobs: a :func:`blob_key` outside the reserved first segments."""
    key = blob_key(key, what)
    if tenant_reserved(key):
        raise InvalidInput(f"{what} {_show(key)} is in a reserved area of the blob store", field=what)
    return key


def internal_blob_key(key: object, what: str = "key") -> str:
    """A key of a tenant's internal view: a :func:`blob_key` that may start with ``.openma`` (the tenant's
    own internal area, which is not the adapter's root bookkeeping)."""
    if isinstance(key, str) and key.startswith(RESERVED_SEGMENT + "/"):
        kv_key(key, what)
        return RESERVED_SEGMENT + "/" + blob_key(key[len(RESERVED_SEGMENT) + 1 :], what)
    return blob_key(key, what)


def tenant_blob_prefix(prefix: object, what: str = "prefix") -> str:
    """A list prefix of a tenant view: one that names a reserved area is refused (results are filtered too)."""
    prefix = blob_prefix(prefix, what)
    if prefix and tenant_reserved(prefix):
        raise InvalidInput(f"{what} {_show(prefix)} is in a reserved area of the blob store", field=what)
    return prefix


def tenant_root(tenant_id: str) -> str:
    return f"{TENANT_ROOT}{tenant_id}/"


def spill_prefix(session_id: str) -> str:
    """Spilled events of a session, relative to the tenant's internal view."""
    return f"{RESERVED_SEGMENT}/sessions/{session_id}/"


def legacy_spill_prefix(session_id: str) -> str:
    """Where a session's spilled events went before they moved under ``.openma`` (tenant-relative)."""
    return f"sessions/{session_id}/"


def snapshot_prefix(session_id: str) -> str:
    """Snapshots of a session, relative to the tenant's internal view."""
    return f"{SNAPSHOT_AREA}{session_id}/"


def snapshot_root_prefix(tenant_id: str, session_id: str) -> str:
    """Snapshots of a session as keys of the platform's whole store."""
    return tenant_root(tenant_id) + snapshot_prefix(session_id)


def new_snapshot_key(tenant_id: str, session_id: str) -> str:
    """A fresh key (of the whole store) for a workspace snapshot of a session."""
    return f"{snapshot_root_prefix(tenant_id, session_id)}{new_id('snp')}.tar.gz"


def latest_snapshot_key(tenant_id: str, session_id: str) -> str:
    """The record of a session's latest snapshot (a key of the whole store)."""
    return snapshot_root_prefix(tenant_id, session_id) + LATEST_SNAPSHOT


def legacy_snapshot_root_prefix(tenant_id: str, session_id: str | None = None) -> str:
    """Where snapshots went before they moved under the tenant (keys of the whole store)."""
    return f"{LEGACY_SNAPSHOT_ROOT}{tenant_id}/" + (f"{session_id}/" if session_id is not None else "")


def legacy_latest_snapshot_key(tenant_id: str, session_id: str) -> str:
    """Where an older release recorded a session's latest snapshot (read, never written)."""
    return legacy_snapshot_root_prefix(tenant_id, session_id) + LATEST_SNAPSHOT


def tenant_owns_snapshot(tenant_id: str, key: str) -> bool:
    """Whether ``key`` (of the whole store) is a snapshot of one of ``tenant_id``'s sessions."""
    current = tenant_root(tenant_id) + SNAPSHOT_AREA
    return key.startswith((current, legacy_snapshot_root_prefix(tenant_id))) and ".." not in key.split("/")


def blob_prefix(prefix: object, what: str = "prefix") -> str:
    """A blob list prefix: any string a key could start with (it need not end at a segment boundary)."""
    prefix = key_prefix(prefix, what)
    if prefix and ("\\" in prefix or prefix.startswith("/") or "//" in prefix):
        raise InvalidInput(f"{what} {_show(prefix)} cannot prefix a valid key", field=what)
    return prefix


def ttl_ms(ttl: object, what: str = "ttl") -> int | None:
    """A TTL in whole milliseconds (rounded up, at least 1), or ``None``."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise InvalidInput(f"{what} must be seconds or a timedelta, got {type(ttl).__name__}", field=what)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInput(f"{what} must be a positive, finite duration, got {ttl!r}", field=what)
    if seconds > MAX_TTL_SECONDS:
        raise InvalidInput(f"{what} is longer than {MAX_TTL_SECONDS} seconds", field=what)
    return max(1, math.ceil(seconds * 1000))


def blob_metadata(value: object, what: str = "metadata") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a dict of strings, got {type(value).__name__}", field=what)
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidInput(f"{what} must map non-empty strings to strings", field=what)
        if "\x00" in k or "\x00" in v:
            raise InvalidInput(f"{what} must not contain NUL characters", field=what)
        _utf8_len(k, what)
        _utf8_len(v, what)
    size = len(dumps(value, what=what).encode("utf-8"))
    if size > MAX_BLOB_METADATA_BYTES:
        raise InvalidInput(f"{what} is too large ({size} > {MAX_BLOB_METADATA_BYTES} bytes as JSON)", field=what)
    return dict(value)


def content_type(value: object, default: str, what: str = "content_type") -> str:
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_CONTENT_TYPE or not _CONTENT_TYPE.match(value):
        raise InvalidInput(f"{what} must be printable ASCII of at most {MAX_CONTENT_TYPE} characters", field=what)
    return value


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix`` (``None``: no bound).

    Used for prefix scans as ``key >= prefix AND key < bound``: literal (no pattern characters), exact
    about case, and served by the primary-key index on every engine.
    """
    chars = list(prefix)
    while chars and ord(chars[-1]) == 0x10FFFF:
        chars.pop()
    if not chars:
        return None
    nxt = ord(chars[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:  # skip the surrogates, which UTF-8 cannot hold
        nxt = 0xE000
    chars[-1] = chr(nxt)
    return "".join(chars)


_CURSOR_VERSION: Final = 1
MAX_CURSOR_CHARS: Final = 4096


def encode_scoped_cursor(scope: str, value: str, *, field: str = "k") -> str:
    """An opaque cursor holding ``value`` under ``field``, bound to a list's fingerprint ``scope``."""
    payload = json.dumps({"v": _CURSOR_VERSION, "s": scope, field: value}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii").rstrip("=")


def decode_scoped_cursor(cursor: object, scope: str, *, field: str = "k", max_chars: int = MAX_CURSOR_CHARS) -> str:
    """The value an :func:`encode_scoped_cursor` cursor holds, or ``InvalidInput`` for a malformed cursor or
    one of another list (a different fingerprint)."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > max_chars:
        raise InvalidInput("cursor is malformed", field="cursor")
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidInput("cursor is malformed", field="cursor") from None
    if (
        not isinstance(data, dict)
        or isinstance(data.get("v"), bool)
        or data.get("v") != _CURSOR_VERSION
        or not isinstance(data.get("s"), str)
        or not isinstance(data.get(field), str)
        or not data[field]
    ):
        raise InvalidInput("cursor is malformed", field="cursor")
    if data["s"] != scope:
        raise InvalidInput("cursor belongs to another list (a different prefix, store or tenant)", field="cursor")
    value: str = data[field]
    return value


def encode_key_cursor(scope: str, last_key: str) -> str:
    """An opaque cursor for a list ordered by key: the last key returned plus the list's fingerprint."""
    return encode_scoped_cursor(scope, last_key)


def decode_key_cursor(cursor: object, scope: str) -> str:
    """The last key of the previous page, or ``InvalidInput`` for a malformed or foreign cursor."""
    last = decode_scoped_cursor(cursor, scope)
    try:
        key: str = kv_key(last, "cursor")  # a tampered key (NUL, surrogate, oversized) never reaches a query
    except InvalidInput:
        raise InvalidInput("cursor is malformed", field="cursor") from None
    return key


def view_key(scope: str, key: object) -> str:
    """``key`` checked for a view of ``scope`` (relative to the view's prefix)."""
    if scope == "tenant":
        return tenant_blob_key(key)
    if scope == "internal":
        return internal_blob_key(key)
    return blob_key(key)


def view_list_prefix(scope: str, prefix: object) -> str:
    """A list ``prefix`` checked for a view of ``scope``."""
    return tenant_blob_prefix(prefix) if scope == "tenant" else blob_prefix(prefix)


def view_shows(scope: str, relative_key: str) -> bool:
    """Whether an object at ``relative_key`` (below the view's prefix) belongs to a view of ``scope``: a tenant
    view never shows openma's reserved areas."""
    return scope != "tenant" or not tenant_reserved(relative_key)
