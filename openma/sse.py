"""Server-Sent Events for a session's live tail, for any ASGI framework.

**Frames.** Every event frame carries ``id: <seq>``, so a browser's ``EventSource`` (or any client) that
reconnects sends ``Last-Event-ID: <seq>`` and :func:`session_events` resumes right after it: no gap, no
duplicate. A frame is ``event: <type>`` and one ``data:`` line holding the event as JSON, an envelope with
the payload kept whole under ``data``::

    id: 42
    event: agent.message
    data: {"id":"evt_…","type":"agent.message","seq":42,"created_at":"2026-…Z","data":{…the payload…}}

The envelope's keys are exactly ``id``, ``type``, ``seq``, ``created_at`` and ``data`` (the fields of
:class:`~openma.models.Event`), and the payload is never merged into it, so a payload key named ``id``,
``seq``, ``created_at`` or anything else comes back unchanged under ``data``.

While nothing happens, a comment line goes out every ``heartbeat`` seconds so proxies and load balancers keep
the connection open. A client that asks to resume below what retention kept gets one ``event: resync`` frame
(``data: {"retained_from": N}``, and no ``id:``, so its position is unchanged) and the stream ends: it should
reload its view, then read from ``N - 1``.

**Before the response starts.** :func:`session_events` is awaited: it checks the resume position and reads
the first page, so a bad position (``InvalidInput``) or a missing session (``NotFound``) is raised before the
host sends a status line, never as a broken stream after a ``200``.

**Stopping.** Pass ``stop=`` an event the host sets when it shuts down: every stream then ends cleanly (the
body iterator finishes, the response completes) instead of holding the server open. A slow client costs the
server one page of events: the tail re-reads the log when the client catches up (see
:mod:`openma.core.tail`), it never queues frames without bound.

With Starlette::

    from starlette.responses import StreamingResponse
    import openma

    async def events(request):
        t = oma.tenant(request.path_params["tenant_id"])
        body = await openma.sse.session_events(
            t.sessions, request.path_params["session_id"],
            last_event_id=request.headers.get("last-event-id"), after=request.query_params.get("after"),
            stop=request.app.state.stopping,          # an anyio.Event the host sets on shutdown
        )
        return StreamingResponse(body, headers=openma.sse.HEADERS)

(``examples/sse_server.py`` shows how to set ``stopping`` when uvicorn begins to shut down.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final, Protocol

from openma.core import validate
from openma.core.jsonutil import MAX_JSON_DEPTH, dumps
from openma.errors import InvalidInput, ResyncRequired
from openma.models import Event
from openma.ports.sessions import EventFeed, StopSignal

#: Response headers for an event stream (no caching, no proxy buffering). Hop-by-hop headers such as
#: ``connection`` are left to the server (HTTP/2 and HTTP/3 forbid them).
HEADERS: Final[dict[str, str]] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    "x-accel-buffering": "no",
}
DEFAULT_HEARTBEAT: Final = 15.0
DEFAULT_RETRY_MS: Final = 1000
MAX_SEQ_DIGITS: Final = 19


class Subscribable(Protocol):
    """What :func:`session_events` needs: ``t.sessions`` or any sessions store."""

    def subscribe(self, session_id: str, *, after: int = 0) -> EventFeed: ...


def event_json(event: Event) -> str:
    """The event as one line of JSON: ``{"id", "type", "seq", "created_at", "data": <payload>}``."""
    return dumps(
        {
            "id": event.id,
            "type": event.type,
            "seq": event.seq,
            "created_at": event.created_at.isoformat().replace("+00:00", "Z"),
            "data": event.data,
        },
        what="event",
        max_depth=MAX_JSON_DEPTH + 1,  # the payload, one level down
    )


def encode_event(event: Event) -> bytes:
    """One SSE frame. JSON escapes its own line breaks; the type cannot hold any (checked on append, and
    here again, since a line break in ``event:`` would end the frame early)."""
    if "\n" in event.type or "\r" in event.type:
        raise InvalidInput("an event type must not contain line breaks", field="type")
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
    tail: EventFeed,
    *,
    heartbeat: float = DEFAULT_HEARTBEAT,
    retry_ms: int | None = DEFAULT_RETRY_MS,
    stop: StopSignal | None = None,
) -> AsyncIterator[bytes]:
    """Frames for ``tail``: events as they come, a heartbeat comment when idle, ``resync`` below retention.

    Ends (and closes the tail) when ``stop`` is set, after the resync frame, or when the consumer closes it.
    """
    try:
        if retry_ms is not None:
            yield f"retry: {int(retry_ms)}\n\n".encode()
        while True:
            try:
                event = await tail.next(timeout=heartbeat, stop=stop)
            except ResyncRequired as exc:
                yield resync_frame(exc)
                return
            if event is not None:
                yield encode_event(event)
            elif stop is not None and stop.is_set():
                return
            else:
                yield comment()
    finally:
        await tail.aclose()


async def session_events(
    sessions: Subscribable,
    session_id: str,
    *,
    last_event_id: object = None,
    after: object = None,
    heartbeat: float = DEFAULT_HEARTBEAT,
    retry_ms: int | None = DEFAULT_RETRY_MS,
    stop: StopSignal | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body for one session, ready to hand to a streaming response.

    Resumes after ``Last-Event-ID`` if the client sent one, else after ``after`` (a query parameter, say),
    else from the start. Awaiting it checks everything that can fail before the first frame: a bad position
    is ``InvalidInput``, a missing session ``NotFound`` (a position below retention is not an error: the
    stream reports it with a ``resync`` frame). The body ends cleanly once ``stop`` is set.
    """
    heartbeat = validate.seconds(heartbeat, "heartbeat")
    if retry_ms is not None:
        retry_ms = validate.integer(retry_ms, "retry_ms")
    resume = parse_position(last_event_id)
    if resume is None:
        resume = parse_position(after, "after")
    tail = sessions.subscribe(session_id, after=resume or 0)
    try:
        await tail.start()
    except ResyncRequired:
        pass  # the stream's first read raises it again and sends the resync frame
    except BaseException:
        await tail.aclose()
        raise
    return stream(tail, heartbeat=heartbeat, retry_ms=retry_ms, stop=stop)
