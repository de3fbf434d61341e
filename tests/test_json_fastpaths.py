"""The fast paths of reading JSON and minting ids give exactly what the reference paths give."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openma.core import ids
from openma.core.jsonutil import dumps, loads
from openma.errors import OpenmaError

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_loads_reads_back_what_dumps_wrote_like_json_loads(value: Any) -> None:
    text = dumps(value)
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_loads_of_any_text_matches_json_loads(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except ValueError as exc:
        expected = exc
    if isinstance(expected, ValueError):
        with pytest.raises(ValueError, match=re.escape(str(expected))):
            loads(text)
    else:
        assert repr(loads(text)) == repr(expected)


@pytest.mark.parametrize(
    "text", [' {"a": 1} ', '{"a":1} x', "", "[1,", '"\\ud800"', "1e400", str(2**80), "NaN", '{"a":1,"a":2}']
)
def test_loads_edge_cases_match_json_loads(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            loads(text)
    else:
        assert repr(loads(text)) == repr(expected)


def test_loads_of_a_document_too_deep_is_an_openma_error() -> None:
    with pytest.raises(OpenmaError):
        loads("[" * 100_000 + "]" * 100_000)


def _reference(ms: int, rand: int) -> str:
    def enc(value: int, length: int) -> str:
        return "".join(reversed([ids._ALPHABET[(value >> (5 * i)) & 31] for i in range(length)]))

    return enc(ms, 10) + enc(rand, 16)


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 1))
def test_id_bodies_are_the_ulid_digits(ms: int, rand: int) -> None:
    assert ids._body((ms << 80) | rand) == _reference(ms, rand)


@given(st.integers(0, 2**130 - 1))
def test_id_bodies_are_the_base32_digits_of_any_130_bit_value(value: int) -> None:
    # derived ids take the top 130 bits of a hash
    assert ids._body(value) == "".join(reversed([ids._ALPHABET[(value >> (5 * i)) & 31] for i in range(26)]))


def test_new_ids_keep_their_shape_and_time() -> None:
    minted = [ids.new_id("evt", now_ms=1_733_212_345_678) for _ in range(50)]
    assert len(set(minted)) == 50
    for value in minted:
        assert re.fullmatch(r"evt_[0-9a-hjkmnp-tv-z]{26}", value)
        assert ids.id_time_ms(value) == 1_733_212_345_678
