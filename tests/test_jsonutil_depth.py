"""``json_depth`` (with its one-level fast path) and ``dumps`` (with its cached C encoder) against references."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from openma.core.jsonutil import dumps, json_depth

_floats = st.floats(allow_nan=False, allow_infinity=False)
_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | _floats
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300)
@given(_values, st.integers(min_value=0, max_value=8))
def test_json_depth_is_the_depth_up_to_one_past_the_limit(value: Any, limit: int) -> None:
    depth = _depth(value)
    got = json_depth(value, limit=limit)
    if depth <= limit:
        assert got == depth
    else:
        assert got > limit


@settings(max_examples=300)
@given(_values)
def test_dumps_matches_the_standard_encoder(value: Any) -> None:
    reference = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert dumps(value) == reference


def test_a_self_referencing_value_is_cut_off() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    assert json_depth(loop, limit=10) == 11
