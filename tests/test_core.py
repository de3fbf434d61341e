"""Pure core pieces: ids, cursors, validation."""

from __future__ import annotations

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


@given(created=st.integers(min_value=0, max_value=2**62), ident=st.text(max_size=40), kind=st.text(max_size=10))
def test_cursor_round_trip(created: int, ident: str, kind: str) -> None:
    scope = scope_of("agents", kind)
    assert decode_cursor(encode_cursor(scope, Keyset(created, ident)), scope) == Keyset(created, ident)


@given(garbage=st.text(max_size=80))
def test_garbage_cursors_are_invalid_input_never_a_crash(garbage: str) -> None:
    try:
        decode_cursor(garbage, scope_of("agents"))
    except InvalidInput:
        pass


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
