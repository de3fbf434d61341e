"""Keyset pagination on ``(created_at, id)`` with opaque cursors that know where they belong.

A cursor encodes the last row's key plus a *scope*: which list produced it (its kind, tenant, filters and
order). Handing a cursor to another list, another tenant or another filter is :class:`InvalidInput`, never
a silent restart from page one; so is anything that does not decode or was tampered with: a key outside
``0 <= created_at < 2**62``, a ``bool`` for a number, an id that is empty, too long, or holds NUL or a lone
surrogate. No edited cursor reaches the database.

``limit`` is between 1 and :data:`MAX_LIMIT` (500) on every entity list; the event log reads up to 1000 and
blob and KV lists up to 1000.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final, TypeVar

import attrs

from openma.errors import InvalidInput
from openma.models import Order

DEFAULT_LIMIT: Final = 50
#: The largest ``limit`` an entity list (tenants, agents, agent versions, environments, sessions) takes.
MAX_LIMIT: Final = 500
#: Largest value of a cursor's first key (a time in ms, a version or a seq); every engine stores it in 64 bits.
MAX_KEY: Final = 2**62
MAX_CURSOR_ID: Final = 256
_VERSION: Final = 1

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_CURSOR_ID",
    "MAX_KEY",
    "MAX_LIMIT",
    "Keyset",
    "Order",
    "check_limit",
    "check_order",
    "decode_cursor",
    "encode_cursor",
    "scope_of",
    "split_page",
]

T = TypeVar("T")
#: Moved; import from openma.adapters.sql.listing (SQL text does not belong in the core). Kept importable
#: from here, lazily, for the modules that still do.
_MOVED_TO_LISTING: Final = frozenset({"keyset_clause", "order_by"})


@attrs.frozen
class Keyset:
    """Where a page starts: strictly after ``(created_at, id)`` in the list's order."""

    created_at: int
    id: str


def check_limit(limit: object, *, maximum: int = MAX_LIMIT) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput(f"limit must be an integer, got {type(limit).__name__}", field="limit")
    if not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be between 1 and {maximum}, got {limit}", field="limit")
    return limit


def check_order(order: object) -> Order:
    if order not in ("asc", "desc"):
        raise InvalidInput(f"order must be 'asc' or 'desc', got {order!r}", field="order")
    return order


def scope_of(kind: str, *parts: Any) -> str:
    """A short fingerprint of what a list is: its kind, tenant, filters and order."""
    raw = json.dumps([kind, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2s(raw.encode(), digest_size=8).hexdigest()


def encode_cursor(scope: str, key: Keyset) -> str:
    payload = json.dumps({"v": _VERSION, "s": scope, "t": key.created_at, "i": key.id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: object, scope: str) -> Keyset:
    """Decode ``cursor`` for the list whose fingerprint is ``scope``, or raise :class:`InvalidInput`."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > 512:
        raise InvalidInput("cursor is malformed", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidInput("cursor is malformed", field="cursor") from None
    if (
        not isinstance(data, dict)
        or data.get("v") != _VERSION
        or isinstance(data.get("v"), bool)
        or not _key_number(data.get("t"))
        or not _key_id(data.get("i"))
        or not isinstance(data.get("s"), str)
    ):
        raise InvalidInput("cursor is malformed", field="cursor")
    if data["s"] != scope:
        raise InvalidInput("cursor belongs to another list (a different kind, tenant, filter or order)", field="cursor")
    return Keyset(data["t"], data["i"])


def _key_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_KEY


def _key_id(value: object) -> bool:
    if not isinstance(value, str) or not value or len(value) > MAX_CURSOR_ID or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_page(rows: Sequence[T], limit: int) -> tuple[list[T], bool]:
    """Rows were fetched with ``limit + 1``; return the page and whether there is more."""
    return list(rows[:limit]), len(rows) > limit


def __getattr__(name: str) -> Any:
    """Moved; import from openma.adapters.sql.listing (``keyset_clause``, ``order_by``)."""
    if name in _MOVED_TO_LISTING:
        from openma.adapters.sql import listing

        return getattr(listing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
