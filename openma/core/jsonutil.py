"""JSON in and out of storage: compact, UTF-8, and strict about what it accepts."""

from __future__ import annotations

import json
from typing import Any

from openma.errors import InvalidInput

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any, *, what: str = "value") -> str:
    """Serialize to compact JSON; non-JSON values (sets, NaN, objects) are :class:`InvalidInput`."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serializable: {exc}", field=what) from None


def loads(text: str | bytes) -> Any:
    return json.loads(text)


def check_json_object(value: Any, *, what: str) -> dict[str, Any]:
    """Require a JSON object (``dict`` with ``str`` keys) and return it."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be an object, got {type(value).__name__}", field=what)
    for key in value:
        if not isinstance(key, str):
            raise InvalidInput(f"{what} keys must be strings", field=what)
    return value
