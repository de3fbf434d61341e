"""Server-Sent Events for a session's live tail, for any ASGI framework.

Every event frame carries ``id: <seq>``, so a browser's ``EventSource`` (or any client) that reconnects
sends ``Last-Event-ID: <seq>`` and :func:`session_events` resumes right after it: no gap, no duplicate.
Frames are ``event: <type>`` and ``data: <the event as one line of JSON>`` (its payload plus ``id``,
``type``, ``seq`` and ``created_at``). While nothing happens, a comment line goes out every ``heartbeat``
seconds so proxies and load balancers keep the connection open. A client that asks to resume below what
retention kept gets one ``event: resync`` frame (``data: {"retained_from": N}``, and no ``id:``, so its
position is unchanged) and the stream ends: it should reload its view, then read from ``N - 1``.

A slow client costs the server one page of events: the tail re-reads the log when the client catches up
(see :mod:`openma.core.tail`), it never queues frames without bound.

With Starlette::

    from starlette.responses import StreamingResponse
    from openma import sse

    async def events(request):
        t = oma.tenant(request.path_params["tenant_id"])
        body = sse.session_events(
            t.sessions, request.path_params["session_id"],
            last_event_id=request.headers.get("last-event-id"), after=request.query_params.get("after"),
        )
        return StreamingResponse(body, headers=sse.HEADERS)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final, Protocol

from openma.core import validate
from openma.core.jsonutil import dumps
from openma.core.tail import EventTail
from openma.errors import InvalidInput, ResyncRequired
from openma.models import Event

#: Response headers for an event stream (no caching, no proxy buffering).
HEADERS: Final[dict[str, str]] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    "x-accel-buffering": "no",
    "connection": "keep-alive",
}
DEFAULT_HEARTBEAT: Final = 15.0
DEFAULT_RETRY_MS: Final = 1000
MAX_SEQ_DIGITS: Final = 19


class Subscribable(Protocol):
    """What :func:`session_events` needs: ``t.sessions`` or any sessions store."""

    def subscribe(self, session_id: str, *, after: int = 0) -> EventTail: ...


def event_json(event: Event) -> str:
    """The event as one line of JSON: its payload plus ``id``, ``type``, ``seq`` and ``created_at``."""
    return dumps(
        {
            **event.data,
            "id": event.id,
            "type": event.type,
            "seq": event.seq,
            "created_at": event.created_at.isoformat().replace("+00:00", "Z"),
        }
    )


def encode_event(event: Event) -> bytes:
    """One SSE frame; the type was checked on append to hold no line breaks, and JSON escapes its own."""
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event_json(event)}\n\n".encode()


def comment(text: str = "keepalive") -> bytes:
    return f": {text}\n\n".encode()


def resync_frame(exc: ResyncRequired) -> bytes:
    return f"event: resync\ndata: {dumps({'retained_from': exc.retained_from})}\n\n".encode()


def parse_position(value: object, what: str = "Last-Event-ID") -> int | None:
    """A resume position (``Last-Event-ID`` header or ``after`` parameter): a seq, or ``None`` if absent."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
    else:
        raise InvalidInput(f"{what} must be an event seq", field=what)
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_SEQ_DIGITS:  # "²".isdigit(), int("²") fails
        raise InvalidInput(f"{what} must be an event seq (a non-negative integer), got {text[:32]!r}", field=what)
    return int(text)


async def stream(
    tail: EventTail, *, heartbeat: float = DEFAULT_HEARTBEAT, retry_ms: int | None = DEFAULT_RETRY_MS
) -> AsyncIterator[bytes]:
    """Frames for ``tail``: events as they come, a heartbeat comment when idle, ``resync`` below retention."""
    try:
        if retry_ms is not None:
            yield f"retry: {int(retry_ms)}\n\n".encode()
        while True:
            try:
                event = await tail.next(timeout=heartbeat)
            except ResyncRequired as exc:
                yield resync_frame(exc)
                return
            yield comment() if event is None else encode_event(event)
    finally:
        await tail.aclose()


def session_events(
    sessions: Subscribable,
    session_id: str,
    *,
    last_event_id: object = None,
    after: object = None,
    heartbeat: float = DEFAULT_HEARTBEAT,
    retry_ms: int | None = DEFAULT_RETRY_MS,
) -> AsyncIterator[bytes]:
    """The SSE body for one session: resume after ``Last-Event-ID`` if the client sent one, else after
    ``after`` (a query parameter, say), else from the start. Bad positions are ``InvalidInput`` at once."""
    heartbeat = validate.seconds(heartbeat, "heartbeat")
    if retry_ms is not None:
        retry_ms = validate.integer(retry_ms, "retry_ms")
    resume = parse_position(last_event_id)
    if resume is None:
        resume = parse_position(after, "after")
    tail = sessions.subscribe(session_id, after=resume or 0)
    return stream(tail, heartbeat=heartbeat, retry_ms=retry_ms)
