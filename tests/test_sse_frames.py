"""SSE frames: the envelope and the payload never collide, and any payload round-trips unchanged.

Frames are parsed the way the SSE specification says a client must (lines end at CR, LF or CRLF; one
optional space after the colon; ``data`` lines joined with LF), not with ``str.splitlines``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openma import InvalidInput
from openma.core.jsonutil import MAX_JSON_DEPTH
from openma.models import Event
from openma.sse import encode_event, event_json

ENVELOPE = {"id", "type", "seq", "created_at", "data"}
_LINE = re.compile(r"\r\n|\r|\n")


def parse_frame(frame: bytes) -> dict[str, str]:
    """One SSE frame's fields, as the specification's event-stream interpretation reads them."""
    text = frame.decode("utf-8")
    assert text.endswith("\n\n"), "a frame ends with a blank line"
    fields: dict[str, list[str]] = {}
    lines = _LINE.split(text[:-2])
    for line in lines:
        assert line, "no blank line inside a frame"
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
    assert all(len(v) == 1 for v in fields.values()), fields
    return {k: v[0] for k, v in fields.items()}


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
# Keys the envelope uses are drawn often, so collisions are tried on every run.
payload_keys = st.sampled_from(sorted(ENVELOPE)) | st.text()
event_types = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and not re.search(r"[\x00-\x1f\x7f-\x9f]", s))


@st.composite
def events(draw: st.DrawFn) -> Event:
    payload = draw(st.dictionaries(payload_keys, json_values, max_size=8))
    event_type = draw(event_types)
    event_id = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,20}", fullmatch=True))
    seq = draw(st.integers(min_value=1, max_value=2**62))
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=draw(st.integers(0, 10**11)))
    if draw(st.booleans()):  # as stored: the payload carries its own id and type
        payload = {**payload, "id": event_id, "type": event_type}
    return Event(event_id, event_type, seq, created, payload)


@settings(max_examples=150, deadline=None)
@given(events())
def test_any_payload_round_trips_unchanged_through_a_frame(event: Event) -> None:
    fields = parse_frame(encode_event(event))
    assert set(fields) == {"id", "event", "data"}
    assert fields["id"] == str(event.seq) and fields["event"] == event.type
    data = json.loads(fields["data"])
    assert set(data) == ENVELOPE
    assert data["data"] == event.data  # unchanged, whatever keys it has
    assert (data["id"], data["type"], data["seq"]) == (event.id, event.type, event.seq)
    assert datetime.fromisoformat(data["created_at"]) == event.created_at
    assert json.loads(event_json(event)) == data


def test_envelope_keys_in_the_payload_are_not_overwritten() -> None:
    payload: dict[str, Any] = {"type": "x", "id": "other", "seq": "payload-seq", "created_at": None, "data": [1]}
    event = Event("e1", "x", 5, datetime(2026, 1, 1, tzinfo=UTC), payload)
    data = json.loads(parse_frame(encode_event(event))["data"])
    assert data == {"id": "e1", "type": "x", "seq": 5, "created_at": "2026-01-01T00:00:00Z", "data": payload}


def test_line_breaks_stay_inside_the_json_and_out_of_the_type() -> None:
    payload = {"t": "a\nb\rc\r\nd\u2028e\u0085f"}
    frame = encode_event(Event("e1", "x", 1, datetime(2026, 1, 1, tzinfo=UTC), payload))
    assert frame.count(b"\n") == 4 and b"\r" not in frame  # three lines and the blank one
    assert json.loads(parse_frame(frame)["data"])["data"] == payload
    for bad in ("a\nb", "a\rb"):
        with pytest.raises(InvalidInput):
            encode_event(Event("e1", bad, 1, datetime(2026, 1, 1, tzinfo=UTC), {}))


def test_a_payload_at_the_nesting_limit_still_frames() -> None:
    value: Any = "x"
    for _ in range(MAX_JSON_DEPTH - 1):
        value = [value]
    payload = {"type": "x", "v": value}
    data = json.loads(parse_frame(encode_event(Event("e1", "x", 1, datetime(2026, 1, 1, tzinfo=UTC), payload)))["data"])
    assert data["data"] == payload
