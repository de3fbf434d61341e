"""The fast JSON path (msgspec, when installed) writes and reads exactly what the reference path does.

The reference is the stdlib encoder behind the depth check (``_reference_dumps``). On any value,
:func:`~openma.core.jsonutil.dumps` gives the same text or the same :class:`InvalidInput` (same message), and
:func:`~openma.core.jsonutil.encode`'s bytes, when it makes them, are that text's UTF-8. Events go through
:func:`~openma.core.events.prepare` the same way. :func:`~openma.core.jsonutil.loads` (the fast decoder, then
the stdlib for what it does not read) gives what ``json.loads`` gives (``repr``-equal, so ``1`` is not
``1.0``) or the same error.
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openma.core import events as ev
from openma.core import jsonutil
from openma.core.jsonutil import MAX_JSON_DEPTH, dumps, encode, loads, loads_all, plain_depth
from openma.errors import InvalidInput
from openma.models import Event, event_from_row


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text()
    | st.sampled_from(["\ud800", "a\udfffb", "\x00\x1f\x7f\u2028\ufeff", "\U0001f600", 'q"\\/'])
)
_odd = st.sampled_from([Colour.RED, Level.LOW, Name("x"), uuid.UUID(int=7), (1, 2), {1, 2}, b"x", object()])
_json: Any = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=25,
)
_keys = st.text(max_size=5) | st.integers() | st.sampled_from([Name("k"), None, 1.5])
_anything: Any = st.recursive(
    _leaf | _odd,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=5) | st.integers() | st.sampled_from([Name("k"), None, 1.5]), inner, max_size=4
        )
        | st.builds(tuple, st.lists(inner, max_size=3))
        | st.builds(OrderedDict, st.dictionaries(st.text(max_size=3), inner, max_size=3))
    ),
    max_leaves=25,
)


def _reference(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | InvalidInput:
    try:
        return jsonutil._reference_dumps(value, "value", max_depth, {})
    except InvalidInput as exc:
        return exc


def _same_dumps(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    expected = _reference(value, max_depth)
    if isinstance(expected, InvalidInput):
        with pytest.raises(InvalidInput) as refused:
            encode(value, max_depth=max_depth)
        assert str(refused.value) == str(expected)
        assert refused.value.details == expected.details
        return
    text, body = encode(value, max_depth=max_depth)
    assert text == expected
    assert dumps(value, max_depth=max_depth) == text
    if body is not None:
        assert body == text.encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(_json)
def test_dumps_of_json_values_is_the_reference(value: Any) -> None:
    _same_dumps(value)


@settings(max_examples=400, deadline=None)
@given(_anything)
def test_dumps_of_any_value_is_the_reference_or_its_error(value: Any) -> None:
    _same_dumps(value)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=80), st.sampled_from([{}, [], 1, "s", 1.5, None]), st.booleans())
def test_depth_limit_is_the_reference(depth: int, leaf: Any, as_dict: bool) -> None:
    value: Any = leaf
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    for limit in (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 3):
        _same_dumps(value, limit)


def test_self_reference_is_refused_as_too_deep() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidInput, match="nested too deeply"):
        dumps(loop)
    d: dict[str, Any] = {}
    d["d"] = d
    with pytest.raises(InvalidInput, match="nested too deeply"):
        dumps({"x": 1.5, "d": d})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(bad: float) -> None:
    for value in ({"a": bad}, [1, [bad]], {"a": [{"b": bad}]}):
        with pytest.raises(InvalidInput, match="not JSON-serializable"):
            dumps(value)


def test_plain_depth() -> None:
    assert plain_depth({}) == 1
    assert plain_depth({"a": [1, {"b": None}], "c": True}) == 3
    assert plain_depth({"a": 1.5}) == -1
    assert plain_depth([(1,)]) == -1
    assert plain_depth([[[]]], limit=2) == 3
    for key in (1, 1.5, None, True, Name("k")):  # keys must be exactly str
        assert plain_depth({"a": {key: 1}}) == -1


def test_the_fast_codec_is_used_when_installed() -> None:
    pytest.importorskip("msgspec")
    assert jsonutil._fast_encode is not None and jsonutil._fast_decode is not None
    text, body = encode({"type": "t", "n": [1, True, None, "é", 2**70]})
    assert body is not None and body.decode() == text == f'{{"type":"t","n":[1,true,null,"é",{2**70}]}}'
    assert encode({"x": 0.5})[1] is None  # floats keep Python's repr: the reference writes them
    assert encode({1e16: 1}) == ('{"1e+16":1}', None)  # so do keys that are not str
    big = f'{{"n":[{2**80},{-(2**70)}]}}'
    assert loads(big) == {"n": [2**80, -(2**70)]}  # integers past 64 bits stay exact


def _same_loads(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:
        expected = exc
    if isinstance(expected, BaseException):
        with pytest.raises(Exception) as got:
            loads(text)
        if isinstance(expected, ValueError):
            assert isinstance(got.value, ValueError) and str(got.value) == str(expected)
        return
    assert repr(loads(text)) == repr(expected)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_loads_of_stored_text_is_json_loads(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))  # NaN and big ints included
    _same_loads(text)
    _same_loads(json.dumps(value))  # \\u escapes, spaces


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]",:0123456789.eE+-tfnrulasN \\u"d8', max_size=40))
def test_loads_of_any_text_is_json_loads(text: str) -> None:
    _same_loads(text)


@pytest.mark.parametrize(
    "text",
    [
        str(2**64),
        str(2**64 - 1),
        str(-(2**63) - 1),
        f'{{"a":[{2**80}]}}',
        "12345678901234567890.5",
        "1e400",
        "NaN",
        "[Infinity]",
        '"\\ud800"',
        "\ufeff{}",
        " [1] ",
        '{"a":1,"a":2}',
        "-0",
        "-0.0",
        "4.9e-324",
        "[" * 2000 + "]" * 2000,
    ],
)
def test_loads_edge_cases_are_json_loads(text: str) -> None:
    _same_loads(text)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _json, max_size=5), st.sampled_from(["t", "agent.message"]))
def test_prepare_stores_the_reference_text(payload: dict[str, Any], event_type: str) -> None:
    raw = {**payload, "type": event_type, "id": "e1"}
    data = dict(raw)
    expected = _reference(data)
    if isinstance(expected, InvalidInput):
        with pytest.raises(InvalidInput, match=re.escape(str(expected).split(" is ", 1)[1])):
            ev.prepare(raw)
        return
    try:
        expected.encode("utf-8")
    except UnicodeEncodeError:  # only the surrogate check refuses it
        with pytest.raises(InvalidInput, match="lone surrogate"):
            ev.prepare(raw)
        return
    got = ev.prepare(raw)
    assert got.text == expected
    assert got.body == expected.encode("utf-8")
    assert loads(got.text) == data or any(isinstance(v, float) and v != v for v in _leaves(data))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def test_checked_types_cache_still_checks_new_types() -> None:
    assert ev.check_type("agent.message") == "agent.message"
    assert ev.prepare({"type": "agent.message"}).type == "agent.message"
    for bad in ("", "  ", "a\x00b", "x" * 129, "\ud800", 5, None):
        with pytest.raises(InvalidInput):
            ev.prepare({"type": bad})
    for i in range(ev._CHECKED_TYPES_CAP + 10):  # the cache stays bounded
        ev.check_type(f"t{i}")
    assert len(ev._CHECKED_TYPES) <= ev._CHECKED_TYPES_CAP


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_json, max_size=6), st.integers(min_value=0, max_value=6), st.sampled_from(["NaN", '"\\ud800"', "1e400"])
)
def test_loads_all_is_loads_of_each(values: list[Any], at: int, odd: str) -> None:
    texts = [json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values]
    for page in (texts, [*texts[:at], odd, *texts[at:]]):  # a text the fast decoder does not read, anywhere
        assert repr(loads_all(page)) == repr([loads(t) for t in page])


def test_event_from_row_is_the_constructor() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 2, tzinfo=UTC)
    fast = event_from_row("evt_1", "t", 3, at, {"id": "evt_1", "type": "t"})
    slow = Event("evt_1", "t", 3, at, {"id": "evt_1", "type": "t"})
    assert type(fast) is Event and fast == slow and repr(fast) == repr(slow) and fast.to_dict() == slow.to_dict()
    with pytest.raises(AttributeError):
        fast.seq = 4  # type: ignore[misc]
    # what the fast path would skip if the model grew it: it must stay without validators and converters
    import attrs

    assert [f.name for f in attrs.fields(Event)] == ["id", "type", "seq", "created_at", "data"]
    assert all(f.validator is None and f.converter is None for f in attrs.fields(Event))
