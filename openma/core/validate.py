"""Input checks shared by every store: clear :class:`~openma.errors.InvalidInput` before any I/O.

One rule for strings, everywhere a string enters (ids, names, titles, descriptions, search ``q``, KV and blob
keys, metadata keys and values at any depth, tools, config, event payloads, stream chunks and errors):

* it must be encodable as UTF-8: a lone surrogate (``"\\ud800"``) is :class:`InvalidInput` naming the
  field, on every engine (no driver or codec error ever escapes);
* a plain text column (a name, a title, a key, a search term) must not contain NUL: Postgres ``text`` cannot
  hold it, so no engine accepts it. Inside a JSON document (config, tools, event payloads) a NUL is
  stored escaped (``\\u0000``), so it is accepted on every engine and reads back equal. Metadata is the
  exception: patches are merged inside the database, where Postgres cannot unescape a NUL, so metadata
  refuses it anywhere (keys and values) on every engine.

Scalar arguments are checked strictly: ``bool`` is not an integer, ``"no"`` is not a flag. Sizes are bounded
so one bad call cannot bloat a row.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Final

from openma.core.clock import datetime_to_ms
from openma.core.jsonutil import dumps
from openma.errors import InvalidInput

MAX_NAME: Final = 200
MAX_METADATA_BYTES: Final = 16_384
MAX_METADATA_KEYS: Final = 64


def utf8(value: str, what: str) -> str:
    """``value`` if UTF-8 can encode it (no lone surrogate), else :class:`InvalidInput` naming ``what``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode (it holds a lone surrogate)", field=what) from None
    return value


def text(value: object, what: str, *, max_len: int, min_len: int = 0) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}", field=what)
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL characters", field=what)
    utf8(value, what)
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
    json_text(out, what)
    return out


def _walk(value: object, what: str) -> None:
    """Every object key at any depth must be a string (else it would read back as another key)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(f"{what} has a non-string object key {key!r}", field=what)
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def json_text(value: object, what: str) -> str:
    """``value`` as compact JSON text, or :class:`InvalidInput` if it cannot be stored on every engine.

    Refused: what is not JSON (sets, NaN, objects, non-string keys), too deep to encode, or holding a string
    UTF-8 cannot encode (a lone surrogate). Walked without recursion, so depth alone cannot crash it.
    """
    try:
        out = dumps(value, what=what)  # first: it refuses cycles, which the walk would not end on
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", field=what) from None
    _walk(value, what)
    utf8(out, what)
    return out


def json_object(value: object, what: str, *, max_bytes: int) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidInput(f"{what} must be an object with string keys", field=what)
    size = len(json_text(value, what).encode())
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


def flag(value: object, what: str) -> bool:
    """A strict boolean: ``True`` or ``False`` only (``"no"``, ``0`` and ``None`` are not flags)."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be True or False, got {type(value).__name__}", field=what)
    return value


def integer(value: object, what: str, *, minimum: int = 0, maximum: int = 2**62) -> int:
    """A strict integer (``bool`` is not one) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(f"{what} must be an integer between {minimum} and {maximum}", field=what)
    return value


def seconds(value: object, what: str, *, maximum: float = 365 * 24 * 3600.0) -> float:
    """A finite, non-negative number of seconds (``bool`` and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{what} must be a number of seconds, got {type(value).__name__}", field=what)
    number = float(value) if not isinstance(value, int) or abs(value) <= 2**53 else math.inf
    if not math.isfinite(number) or not 0 <= number <= maximum:
        raise InvalidInput(f"{what} must be a finite number of seconds between 0 and {maximum:g}", field=what)
    return number


def like_pattern(q: object, what: str = "q") -> str:
    """A case-insensitive substring pattern for ``LIKE ? ESCAPE '\\'`` over a casefolded column."""
    needle = text(q, what, max_len=MAX_NAME, min_len=1).casefold()
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_key(value: str) -> str:
    """What a name is matched against: casefolded, so search is case-insensitive on every engine."""
    return value.casefold()
