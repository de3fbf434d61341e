"""Input checks shared by every store: clear :class:`~openma.errors.InvalidInput` before any I/O.

Text may be any Unicode except NUL (Postgres cannot store it, so no engine accepts it); sizes are bounded
so one bad call cannot bloat a row.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

from openma.core.clock import datetime_to_ms
from openma.core.jsonutil import dumps
from openma.errors import InvalidInput

MAX_NAME: Final = 200
MAX_METADATA_BYTES: Final = 16_384
MAX_METADATA_KEYS: Final = 64


def text(value: object, what: str, *, max_len: int, min_len: int = 0) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}", field=what)
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL characters", field=what)
    if len(value) > max_len:
        raise InvalidInput(f"{what} is too long ({len(value)} > {max_len} characters)", field=what)
    if len(value.strip()) < min_len:
        raise InvalidInput(f"{what} must not be empty", field=what)
    return value


def name(value: object, what: str = "name") -> str:
    return text(value, what, max_len=MAX_NAME, min_len=1)


def objects(value: object, what: str, *, max_items: int = 256) -> list[dict[str, Any]]:
    """A list of JSON objects (tools, MCP servers, skills)."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"{what} must be a list of objects, got {type(value).__name__}", field=what)
    if len(value) > max_items:
        raise InvalidInput(f"{what} has too many items ({len(value)} > {max_items})", field=what)
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not all(isinstance(k, str) for k in item):
            raise InvalidInput(f"{what}[{i}] must be an object", field=what)
    out = [dict(item) for item in value]
    dumps(out, what=what)
    return out


def json_object(value: object, what: str, *, max_bytes: int) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidInput(f"{what} must be an object with string keys", field=what)
    size = len(dumps(value, what=what).encode())
    if size > max_bytes:
        raise InvalidInput(f"{what} is too large ({size} > {max_bytes} bytes)", field=what)
    return dict(value)


#: A JSON ``\u0000`` escape whose backslash is not itself escaped: a NUL inside a string.
_NUL_ESCAPE: Final = re.compile(r"[^\\](?:\\\\)*\\u0000")


def metadata(value: object, what: str = "metadata") -> dict[str, Any]:
    out = _metadata_shape(value, what)
    _no_nul(out, what)
    return out


def _metadata_shape(value: object, what: str) -> dict[str, Any]:
    out = json_object(value, what, max_bytes=MAX_METADATA_BYTES)
    if len(out) > MAX_METADATA_KEYS:
        raise InvalidInput(f"{what} has too many keys ({len(out)} > {MAX_METADATA_KEYS})", field=what)
    for key in out:
        text(key, f"{what} key", max_len=128, min_len=1)
    return out


def _no_nul(value: dict[str, Any], what: str) -> None:
    if _NUL_ESCAPE.search(dumps(value, what=what)):
        raise InvalidInput(f"{what} must not contain NUL characters", field=what)


def merge_metadata(current: dict[str, Any], patch: object) -> dict[str, Any]:
    """Merge ``patch`` into ``current`` key by key; a ``None`` value removes the key.

    The patch may not bring a NUL character; values already stored are kept as they are.
    """
    if not isinstance(patch, dict):
        raise InvalidInput("metadata must be an object", field="metadata")
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    out = _metadata_shape(merged, "metadata")
    _no_nul(patch, "metadata")
    return out


def time_bound(value: object, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{what} must be a timezone-aware datetime", field=what)
    return datetime_to_ms(value)


def like_pattern(q: object, what: str = "q") -> str:
    """A case-insensitive substring pattern for ``LIKE ? ESCAPE '\\'`` over a casefolded column."""
    needle = text(q, what, max_len=MAX_NAME, min_len=1).casefold()
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_key(value: str) -> str:
    """What a name is matched against: casefolded, so search is case-insensitive on every engine."""
    return value.casefold()
