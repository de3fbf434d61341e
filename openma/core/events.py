"""Events in and out of a log, whatever the store: input checks, ids, spill stubs and their verification.

* An event is a JSON object with a non-empty string ``type``; unknown types are fine. Its ``id`` is kept if
  the caller gave one (``[A-Za-z0-9][A-Za-z0-9_.:-]*``, at most 128 characters, so provider tool-call ids
  fit) and minted (``evt_…``) otherwise. The stored payload is the object itself with its ``id`` set.
* Limits, checked before any I/O: at most :data:`~openma.core.jsonutil.MAX_JSON_DEPTH` levels of nesting
  (the event object counts as one), and at most :data:`MAX_EVENT_BYTES` of JSON, a fixed cap that holds
  whatever the spill threshold is.
* Size is the UTF-8 byte length of the compact JSON. Above the spill threshold the JSON goes to the blob
  store under a key derived from the session, the event id and the content hash, and the row keeps a stub:
  ``{"id", "type", "_spilled": {"key", "bytes", "sha256"}}``. The key names the content, so a retried
  append rewrites the same object, and a racing append of the same id with other content cannot clobber
  the stored one.
* Every read of a stub goes through :func:`rehydrate`, which checks size and hash: a missing or altered
  blob is :class:`~openma.errors.SpillIntegrityError` naming the event, never a silent stub.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import attrs

from openma.core import keys
from openma.core.ids import new_id
from openma.core.jsonutil import dumps, encode, loads
from openma.errors import InvalidInput, SpillIntegrityError

#: An event id given by the caller.
EVENT_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
MAX_TYPE_LEN: Final = 128
#: Most events one append (or post) may carry; one append is one transaction.
MAX_BATCH: Final = 1000
#: Largest event accepted at all, spilled or not: a fixed cap that no setting (not even a larger spill
#: threshold) lifts.
MAX_EVENT_BYTES: Final = 64 * 1024 * 1024
SPILL_CONTENT_TYPE: Final = "application/json"

_EVENT_ID_MATCH: Final = EVENT_ID_RE.fullmatch
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Event types already checked (exact ``str`` only): a log holds few distinct types, so most checks are a
# dict hit. Bounded: past the cap it is cleared and refilled.
_CHECKED_TYPES: dict[str, None] = {}
_CHECKED_TYPES_CAP: Final = 4096


class PreparedEvent(NamedTuple):
    """A checked event, ready to store: its compact JSON as text and as UTF-8 bytes.

    A named tuple, not an ``attrs`` class: one is built per event on the append path, and a tuple is
    built in a third of the time.
    """

    id: str
    type: str
    data: dict[str, Any]
    text: str
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body)


@attrs.frozen
class Spill:
    """Where a spilled event's JSON lives and how to check it."""

    key: str
    size: int
    sha256: str

    def stub(self, event_id: str, event_type: str) -> str:
        return dumps(
            {
                "id": event_id,
                "type": event_type,
                "_spilled": {"key": self.key, "bytes": self.size, "sha256": self.sha256},
            }
        )


def check_event_id(value: object, what: str = "event id") -> str:
    if not isinstance(value, str) or EVENT_ID_RE.fullmatch(value) is None:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 64 else repr(value[:61] + "...")
        raise InvalidInput(
            f"{what} {shown} is not valid: use 1-128 characters from A-Z a-z 0-9 _ . : - (starting with a letter "
            "or digit)",
            field="id",
        )
    return value


def check_event_ids(values: object, what: str = "event_ids") -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidInput(f"{what} must be a list of event ids", field=what)
    out = [check_event_id(v) for v in values]
    if len(out) > MAX_BATCH:
        raise InvalidInput(f"{what} has too many ids ({len(out)} > {MAX_BATCH})", field=what)
    return out


def check_type(value: object, what: str = "type") -> str:
    if type(value) is str and value in _CHECKED_TYPES:
        return value
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"event {what} must be a non-empty string", field=what)
    if len(value) > MAX_TYPE_LEN:
        raise InvalidInput(f"event {what} is too long ({len(value)} > {MAX_TYPE_LEN} characters)", field=what)
    if _CONTROL.search(value):
        raise InvalidInput(f"event {what} must not contain control characters", field=what)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"event {what} is not valid Unicode (lone surrogate)", field=what) from None
    if type(value) is str:
        if len(_CHECKED_TYPES) >= _CHECKED_TYPES_CAP:
            _CHECKED_TYPES.clear()
        _CHECKED_TYPES[value] = None
    return value


def prepare(raw: object, *, index: int = 0, max_bytes: int = MAX_EVENT_BYTES) -> PreparedEvent:
    """Check one event and serialize it; raise :class:`InvalidInput` (naming its index) before any I/O.

    ``max_bytes`` may lower the size cap, never raise it past :data:`MAX_EVENT_BYTES` (whatever the spill
    threshold); the nesting limit is :data:`~openma.core.jsonutil.MAX_JSON_DEPTH`, counting the event object.
    """
    if not isinstance(raw, dict):
        where = f"events[{index}]"
        raise InvalidInput(f"{where} must be a JSON object, got {type(raw).__name__}", field="events", index=index)
    for key in raw:
        if type(key) is not str and not isinstance(key, str):
            raise InvalidInput(f"events[{index}] keys must be strings", field="events", index=index)
    event_type = raw.get("type")
    if type(event_type) is not str or event_type not in _CHECKED_TYPES:
        event_type = check_type(event_type, f"events[{index}].type")
    given = raw.get("id")
    if given is None:
        event_id = new_id("evt")
    elif type(given) is str and _EVENT_ID_MATCH(given) is not None:  # the common case, without building a message
        event_id = given
    else:
        event_id = check_event_id(given, f"events[{index}].id")
    data = dict(raw)
    data["id"] = event_id
    where = f"events[{index}]"
    text, body = encode(data, what=where, field="events", index=index)
    if body is None:
        try:
            body = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{where} is not valid Unicode (lone surrogate)", field="events", index=index) from None
    if len(body) > max_bytes or len(body) > MAX_EVENT_BYTES:
        limit = min(max_bytes, MAX_EVENT_BYTES)
        raise InvalidInput(f"{where} is too large ({len(body)} > {limit} bytes of JSON)", field="events", index=index)
    return PreparedEvent(event_id, event_type, data, text, body)


def prepare_batch(events: object, *, max_bytes: int = MAX_EVENT_BYTES) -> list[PreparedEvent]:
    """Check a batch, one prepared event per input (see :func:`unique` for what to store)."""
    if type(events) is not list:  # a list is the common case; anything else is checked in full
        if isinstance(events, dict):
            raise InvalidInput("events must be a list of event objects (wrap a single event in a list)", field="events")
        if isinstance(events, str | bytes) or not isinstance(events, Sequence):
            raise InvalidInput(f"events must be a list of objects, got {type(events).__name__}", field="events")
    if len(events) > MAX_BATCH:
        raise InvalidInput(f"too many events in one call ({len(events)} > {MAX_BATCH})", field="events")
    return [prepare(raw, index=i, max_bytes=max_bytes) for i, raw in enumerate(events)]


def unique(prepared: Sequence[PreparedEvent]) -> list[PreparedEvent]:
    """The events to store: an id that appears twice in a batch is stored once (the first), as a retry would be."""
    seen: set[str] = set()
    out: list[PreparedEvent] = []
    for p in prepared:
        if p.id not in seen:
            seen.add(p.id)
            out.append(p)
    return out


def spill_key(session_id: str, event: PreparedEvent) -> Spill:
    digest = hashlib.sha256(event.body).hexdigest()
    return Spill(f"{keys.spill_prefix(session_id)}events/{event.id}.{digest[:32]}.json", event.size, digest)


def session_blob_prefix(session_id: str) -> str:
    """Every blob of one session lives under this prefix of the tenant's internal blob view (so deleting a
    session sweeps them all); :func:`openma.core.keys.legacy_spill_prefix` is where older releases put them."""
    return keys.spill_prefix(session_id)


def stub_spill(event_id: str, data: dict[str, Any], key: str | None) -> Spill:
    """The spill record of a stored stub, checked against its row."""
    meta = data.get("_spilled")
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("key"), str)
        or not isinstance(meta.get("bytes"), int)
        or not isinstance(meta.get("sha256"), str)
        or (key is not None and meta["key"] != key)
    ):
        raise SpillIntegrityError(
            f"event {event_id} is a spill stub without a usable _spilled record",
            event_id=event_id,
            key=key or "",
            reason="bad_stub",
        )
    return Spill(meta["key"], meta["bytes"], meta["sha256"])


def rehydrate(event_id: str, event_type: str, spill: Spill, body: bytes | None) -> dict[str, Any]:
    """The event a stub stands for, from its blob's bytes (``None``: the blob is gone)."""
    if body is None:
        raise SpillIntegrityError(
            f"event {event_id} was spilled to {spill.key!r}, which is missing from the blob store",
            event_id=event_id,
            key=spill.key,
            reason="missing",
        )
    if len(body) != spill.size or hashlib.sha256(body).hexdigest() != spill.sha256:
        raise SpillIntegrityError(
            f"event {event_id}: blob {spill.key!r} does not match the size and sha256 stored with the event",
            event_id=event_id,
            key=spill.key,
            reason="hash_mismatch",
        )
    try:
        data = loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("id") != event_id or data.get("type") != event_type:
        raise SpillIntegrityError(
            f"event {event_id}: blob {spill.key!r} does not hold this event",
            event_id=event_id,
            key=spill.key,
            reason="wrong_content",
        )
    return data


def check_chunks(chunks: object, *, max_bytes: int = 4 * 1024 * 1024) -> list[str]:
    """Stream chunks: a list of strings, at most ``max_bytes`` of UTF-8 per call."""
    if isinstance(chunks, str):
        chunks = [chunks]
    if not isinstance(chunks, Sequence) or not all(isinstance(c, str) for c in chunks):
        raise InvalidInput("chunks must be a list of strings", field="chunks")
    size = 0
    for chunk in chunks:
        if "\x00" in chunk:
            raise InvalidInput("chunks must not contain NUL characters", field="chunks")
        try:
            size += len(chunk.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput("chunks are not valid Unicode (lone surrogate)", field="chunks") from None
    if size > max_bytes:
        raise InvalidInput(f"chunks are too large for one append ({size} > {max_bytes} bytes)", field="chunks")
    return list(chunks)
