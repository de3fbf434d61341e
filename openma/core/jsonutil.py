"""JSON in and out of storage: compact, UTF-8, and strict about what it accepts.

**Nesting limit.** Every JSON value a caller hands to openma (an event, an input, an agent's ``tools``, an
environment's ``config``, any ``metadata``, a ``stop_reason`` inside a status event, ...) may nest at most
:data:`MAX_JSON_DEPTH` containers deep: ``{}`` and ``[]`` count one level each, scalars none, so
``{"a": [1]}`` is 2 deep. Deeper values are :class:`~openma.errors.InvalidInput` naming the field, and nothing
is written. Documents openma composes from checked values (an agent's stored definition, a session's
snapshot of its agent and environment) embed them one level down, so they are written with
``max_depth=MAX_JSON_DEPTH + 1``. The limit sits far below the interpreter's recursion limit, so whatever is
stored reads back on every path.

The depth check is an iterative walk (no recursion, so a 100 000-deep value cannot overflow the stack of the
checker), it stops at the first level past the limit (so a self-referencing value is refused too, not walked
forever), and it runs before the encoder sees the value: :func:`dumps` never lets a ``RecursionError`` out.

**Fast path.** When ``msgspec`` is installed, it encodes a *plain* value (only ``dict`` / ``list``
containers with ``str`` keys, and ``str``, ``int``, ``bool`` and ``None`` leaves, of exactly those types) and
decodes stored text: about 3x faster than the stdlib on a 1 KB event to encode, and 4x to decode. The
plain-value walk is the depth walk itself, so it costs nothing extra; anything else (a float, a subclass, a
tuple, a non-string key, a lone surrogate) takes the reference path (the stdlib encoder), so the text written
and the errors raised are exactly the reference's. Decoding is strict JSON in both: whatever ``msgspec`` does
not read (NaN, a lone surrogate escape, a number out of float range, nesting past its limit) is read by the
stdlib, whose result or error is the reference. ``tests/test_speed_codec.py`` checks both directions on
generated values.
"""

from __future__ import annotations

import importlib
import json
import json.scanner
from collections.abc import Sequence
from typing import Any, Final

from openma.errors import InvalidInput, OpenmaError

_msgspec: Any
try:  # an optional accelerator: the same text and values, faster (see "Fast path" above)
    _msgspec = importlib.import_module("msgspec")
except ImportError:  # pragma: no cover - exercised where msgspec is not installed
    _msgspec = None

#: The deepest nesting of any JSON value openma stores (``{}`` / ``[]`` count one level each).
MAX_JSON_DEPTH: Final = 64

# No cycle check in the encoder: the depth check before it refuses a cycle (it never ends within the limit).
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)
_CONTAINERS: Final = (dict, list, tuple)
# The C encoder ``_encoder.encode`` builds on every call, built once (same options; ``None`` markers: no cycle
# check, as above). Without the C accelerator, ``_encoder.encode`` is used.
_c_encode: Any = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # the stub names the class
# Leaves the fast encoder may see: exactly these types (a float takes the reference path, so its text is
# Python's repr, and NaN is refused there).
_PLAIN_LEAVES: Final = frozenset({str, int, bool, type(None)})
# msgspec's encoder and decoder, built once (both are stateless and thread-safe).
_fast_encode: Any = _msgspec.json.Encoder().encode if _msgspec is not None else None
_fast_decode: Any = _msgspec.json.Decoder().decode if _msgspec is not None else None
# What the fast decoder raises for text it does not read (its own errors, nesting past its limit, a lone
# surrogate in the text, which it cannot take as UTF-8); the stdlib then reads it, and decides.
_FAST_DECODE_ERRORS: Final = (_msgspec.MsgspecError, RecursionError, UnicodeEncodeError) if _msgspec is not None else ()


def json_depth(value: Any, *, limit: int = MAX_JSON_DEPTH) -> int:
    """How many containers deep ``value`` nests (a scalar is 0), without recursion, up to ``limit + 1``.

    The walk stops as soon as it goes past ``limit`` and returns ``limit + 1``: that bounds the work on a
    self-referencing value, which has no finite depth.
    """
    if not isinstance(value, _CONTAINERS):
        return 0
    # Most values (an event, its payload) hold few containers: look one level down first.
    top = value.values() if isinstance(value, dict) else value
    nested = [child for child in top if isinstance(child, _CONTAINERS)]
    if not nested:
        return 1
    if limit < 2:
        return 2
    deepest = 2
    stack: list[tuple[Any, int]] = [(child, 2) for child in nested]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        inner = depth + 1
        for child in children:
            if isinstance(child, _CONTAINERS):
                if inner > limit:
                    return inner
                if inner > deepest:
                    deepest = inner
                stack.append((child, inner))
    return deepest


def plain_depth(value: dict[str, Any] | list[Any], *, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of a *plain* container (see the module's "Fast path"), or ``-1`` if it is not plain.

    Like :func:`json_depth`, it walks without recursion and stops past ``limit`` (returning ``limit + 1``,
    also for a self-referencing value). Every key must be exactly a ``str``. A ``-1`` says nothing about the
    depth.
    """
    deepest = 1
    stack: list[tuple[Any, int]] = [(value, 1)]
    leaves = _PLAIN_LEAVES
    while stack:
        node, depth = stack.pop()
        inner = depth + 1
        if type(node) is dict:
            for key in node:
                if type(key) is not str:
                    return -1
            children = node.values()
        else:
            children = node
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                if inner > limit:
                    return inner
                if inner > deepest:
                    deepest = inner
                stack.append((child, inner))
            elif kind not in leaves:
                return -1
    return deepest


def check_depth(value: Any, *, what: str = "value", max_depth: int = MAX_JSON_DEPTH, **details: Any) -> None:
    """Raise :class:`InvalidInput` (``field=what``) if ``value`` nests deeper than ``max_depth``."""
    if json_depth(value, limit=max_depth) > max_depth:
        _too_deep(what, max_depth, details)


def dumps(value: Any, *, what: str = "value", max_depth: int = MAX_JSON_DEPTH, **details: Any) -> str:
    """Serialize to compact JSON.

    Non-JSON values (sets, NaN, non-string keys, objects) and values nested deeper than ``max_depth`` are
    :class:`InvalidInput` naming ``what`` (``details`` go into the error, ``field=`` overrides the name).
    """
    return encode(value, what=what, max_depth=max_depth, **details)[0]


def encode(
    value: Any, *, what: str = "value", max_depth: int = MAX_JSON_DEPTH, **details: Any
) -> tuple[str, bytes | None]:
    """:func:`dumps`, and the UTF-8 bytes of the text when the fast path made them (``None`` otherwise).

    The text is the same either way; a caller that needs the bytes encodes the text when it gets ``None``
    (which is also where a lone surrogate shows: the fast path never takes one).
    """
    kind = type(value)
    if _fast_encode is not None and (kind is dict or kind is list):
        depth = plain_depth(value, limit=max_depth)
        if depth > 0:
            if depth > max_depth:
                _too_deep(what, max_depth, details)
            try:
                body: bytes = _fast_encode(value)
            except (TypeError, ValueError):  # a lone surrogate, an integer too long to print: the reference decides
                pass
            else:
                return body.decode(), body
    return _reference_dumps(value, what, max_depth, details), None


def _too_deep(what: str, max_depth: int, details: dict[str, Any]) -> None:
    raise InvalidInput(
        f"{what} is nested too deeply (more than {max_depth} levels of objects and arrays)",
        **{"field": what, "max_depth": max_depth, **details},
    )


def _reference_dumps(value: Any, what: str, max_depth: int, details: dict[str, Any]) -> str:
    check_depth(value, what=what, max_depth=max_depth, **details)
    try:
        if _c_encode is not None and isinstance(value, dict | list):
            return "".join(_c_encode(value, 0))
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serializable: {exc}", **{"field": what, **details}) from None
    except RecursionError:  # pragma: no cover - the depth check runs first; kept so it can never escape
        raise InvalidInput(f"{what} is nested too deeply", **{"field": what, **details}) from None


def loads(text: str | bytes) -> Any:
    """Parse stored JSON. A document too deep for the parser (only a row written without the nesting limit
    can be) is an :class:`~openma.errors.OpenmaError`, never a raw ``RecursionError``.

    The fast decoder reads it when it can (see the module's "Fast path"); anything it does not read goes to
    the stdlib: compact text straight to the C scanner, and whatever that does not consume whole (surrounding
    whitespace, bytes, an error) to ``json.loads``, whose result and errors are the reference.
    """
    if _fast_decode is not None:
        try:
            return _fast_decode(text)
        except _FAST_DECODE_ERRORS:
            pass
    try:
        if type(text) is str:
            try:
                value, end = _scan(text, 0)
            except (StopIteration, ValueError):
                pass
            else:
                if end == len(text):
                    return value
        return json.loads(text)
    except RecursionError:
        raise OpenmaError(
            "stored JSON is nested too deeply to read back; it predates the nesting limit "
            f"({MAX_JSON_DEPTH} levels): remove it (prune the event, or rewrite the row)"
        ) from None


def loads_all(texts: Sequence[str | bytes]) -> list[Any]:
    """:func:`loads` of each text, in order: the read path's page of rows in one call.

    The fast decoder reads the page when it can; a page holding any text it does not read is read again
    text by text through :func:`loads` (same results and errors as calling it on each).
    """
    decode = _fast_decode
    if decode is not None:
        try:
            return [decode(text) for text in texts]
        except _FAST_DECODE_ERRORS:
            pass
    return [loads(text) for text in texts]


def check_json_object(value: Any, *, what: str) -> dict[str, Any]:
    """Require a JSON object (``dict`` with ``str`` keys) and return it."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be an object, got {type(value).__name__}", field=what)
    for key in value:
        if not isinstance(key, str):
            raise InvalidInput(f"{what} keys must be strings", field=what)
    return value
