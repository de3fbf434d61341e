"""Validators for configuration fields: each raises a ``ConfigError`` naming the field (its setting name).

They check the type first (a bool is not an int, an int is not a str, a float is not an int) and then the
range, and never let another exception out (NaN, infinities and integers too large for a float included).
A field declared with :func:`openma.config.setting` is named by its setting name (``sqlite_readers``, the
flat name on ``Settings``), any other field by its attribute name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final

import attrs

from openma.errors import ConfigError

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def describe(value: object) -> str:
    """A short description of a wrong value for an error message: numbers shown, anything else by type only
    (a misplaced secret is never echoed)."""
    if isinstance(value, bool):
        return f"the bool {value}"
    if isinstance(value, int | float):
        return f"the {type(value).__name__} {_num(value)}"
    return f"a value of type {type(value).__name__}"


def _num(value: int | float) -> str:
    if isinstance(value, int) and abs(value) > 10**30:
        return "a number with more than 30 digits"
    return repr(value)


def _name(attribute: attrs.Attribute[Any]) -> str:
    return str(attribute.metadata.get("setting", attribute.name))


def integer_in(lo: int, hi: int) -> Validator:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        want = f"an integer from {lo} to {hi}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_name(attribute)} must be {want}, got {describe(value)}", field=_name(attribute))
        if not lo <= value <= hi:
            raise ConfigError(f"{_name(attribute)} must be {want}, got {_num(value)}", field=_name(attribute))

    return check


def number_in(lo: float, hi: float, *, above: bool = False) -> Validator:
    """A finite int or float in ``[lo, hi]`` (``(lo, hi]`` with ``above``)."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        want = f"a finite number {'>' if above else '>='} {lo:g} and <= {hi:g}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{_name(attribute)} must be {want}, got {describe(value)}", field=_name(attribute))
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or number < lo or (above and number == lo) or number > hi:
            raise ConfigError(f"{_name(attribute)} must be {want}, got {_num(value)}", field=_name(attribute))

    return check


def boolean(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{_name(attribute)} must be True or False, got {describe(value)}", field=_name(attribute))


def string(*, optional: bool = False, blank: bool = False) -> Validator:
    """A string without control characters (``None`` too when ``optional``; ``""`` too when ``blank``)."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str):
            want = "a string or None" if optional else "a string"
            raise ConfigError(f"{_name(attribute)} must be {want}, got {describe(value)}", field=_name(attribute))
        if _CONTROL.search(value):
            raise ConfigError(f"{_name(attribute)} must not contain control characters", field=_name(attribute))
        if not blank and not optional and not value.strip():
            raise ConfigError(f"{_name(attribute)} must not be empty", field=_name(attribute))

    return check


def load_json(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON ({exc.msg} at position {exc.pos})", variable=what) from None
    except (ValueError, RecursionError) as exc:  # a number with too many digits, nesting too deep
        raise ConfigError(f"{what} is not usable JSON ({type(exc).__name__}: {exc})", variable=what) from None
