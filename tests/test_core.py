"""Pure core pieces: ids, cursors, validation."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openma import InvalidInput
from openma.core import validate
from openma.core.ids import check_id, id_time_ms, new_id
from openma.core.pagination import Keyset, decode_cursor, encode_cursor, scope_of


def test_ids_are_prefixed_sortable_and_unique() -> None:
    ids = [new_id("agt") for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert ids == sorted(ids)
    assert all(i.startswith("agt_") and len(i) == 30 for i in ids)
    assert check_id(ids[0], "agt") == ids[0]


def test_id_carries_its_time() -> None:
    assert id_time_ms(new_id("evt", now_ms=1_700_000_000_123)) == 1_700_000_000_123
    assert new_id("x", now_ms=1000) < new_id("x", now_ms=2000)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "agt_",
        "agt_short",
        "AGT_01h0000000000000000000000z",
        "agt_01h0000000000000000000000Z",
        "env_01h0000000000000000000000z",
        "agt_01h000000000000000000000u0",
        None,
        5,
        "agt_01h0000000000000000000000z\n",
    ],
)
def test_check_id_refuses(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_id(bad, "agt")


_IDS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)


@given(created=st.integers(min_value=0, max_value=2**62), ident=_IDS, kind=st.text(max_size=10))
def test_cursor_round_trip(created: int, ident: str, kind: str) -> None:
    scope = scope_of("agents", kind)
    assert decode_cursor(encode_cursor(scope, Keyset(created, ident)), scope) == Keyset(created, ident)


def _b64(payload: object) -> str:
    raw = json.dumps(payload).encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_SCOPE = scope_of("agents")
#: Well-formed cursors whose key was edited: what the database must never see.
_TAMPERED = st.one_of(
    st.builds(
        lambda t, i: _b64({"v": 1, "s": _SCOPE, "t": t, "i": i}),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2**62 + 1), st.booleans(), st.floats(), st.text()),
        st.text(),
    ),
    st.builds(
        lambda t, i: _b64({"v": 1, "s": _SCOPE, "t": t, "i": i}),
        st.integers(0, 10),
        st.one_of(st.just(""), st.sampled_from(["\x00", "a\x00", "\ud800", "x" * 300]), st.integers(), st.none()),
    ),
    st.builds(lambda v: _b64({"v": v, "s": _SCOPE, "t": 1, "i": "x"}), st.one_of(st.just(True), st.integers(2))),
)


@given(garbage=st.one_of(st.text(max_size=80), st.text(st.characters(exclude_categories=()), max_size=20), _TAMPERED))
def test_garbage_cursors_are_invalid_input_never_a_crash(garbage: str) -> None:
    with pytest.raises(InvalidInput):
        decode_cursor(garbage, _SCOPE)


def test_cursor_scope_mismatch() -> None:
    cursor = encode_cursor(scope_of("agents", "tnt_a"), Keyset(1, "x"))
    with pytest.raises(InvalidInput, match="another list"):
        decode_cursor(cursor, scope_of("agents", "tnt_b"))


def test_like_pattern_escapes_metacharacters() -> None:
    assert validate.like_pattern("50%_off\\") == "%50\\%\\_off\\\\%"
    assert validate.like_pattern("ÄBC") == "%äbc%"


def test_metadata_merge_and_limits() -> None:
    assert validate.merge_metadata({"a": 1, "b": 2}, {"b": None, "c": 3}) == {"a": 1, "c": 3}
    with pytest.raises(InvalidInput):
        validate.metadata({f"k{i}": i for i in range(65)})
    with pytest.raises(InvalidInput):
        validate.metadata({"": 1})
