"""Live tail and inbox wait, built once over the session ports: read, then follow, with no gap and no duplicate.

:func:`subscribe` follows a session's log over :meth:`~openma.ports.sessions.EventLog.read_after` and the
store's :class:`~openma.ports.sessions.SessionWakeups`; :func:`wait_pending` waits for inbox input over
:meth:`~openma.ports.sessions.Inbox.pending` and the same wake-ups. No store carries its own copy of either loop.

The follower never trusts a wake-up to carry data. A wake-up only says "the log may have grown"; the
follower then re-reads the log after the last seq it delivered. So:

* **No gap, no duplicate.** The follower arms its wake-up *before* each read, so an append that commits
  after the read has started sets the armed event and forces another read; events are delivered in seq
  order and only when ``seq > last delivered`` (a re-read that overlaps is deduplicated by seq).
* **Slow consumers cost writers nothing.** Writers only set an event (level-triggered: ten appends while a
  consumer is busy are one wake-up); the follower holds at most one page in memory and reads the rest from
  the log when it gets to it. Nothing is buffered per subscriber beyond that page.
* **Cross-process.** Wake-ups are in-process; another process's appends arrive through Postgres
  LISTEN/NOTIFY (which sets the same events) or, on SQLite, by re-reading every poll interval. Either way a
  wait is bounded by a timeout, so a lost notification delays an event, never loses it.
* **Retention.** A follower whose position falls below what retention kept gets
  :class:`~openma.errors.ResyncRequired` from the read, and the tail raises it.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Final, Protocol

import anyio

from openma.core.ids import check_id
from openma.errors import InvalidInput
from openma.models import Event, InboxItem, Page
from openma.ports.sessions import SessionWakeups, StopSignal, Wakeup

__all__ = [
    "DEFAULT_PAGE",
    "EventTail",
    "Followable",
    "ReadAfter",
    "StopSignal",
    "WakeHub",
    "Waitable",
    "subscribe",
    "wait_pending",
]

DEFAULT_PAGE: Final = 100


class WakeHub:
    """In-process wake-ups keyed by anything hashable (a session), level-triggered.

    ``arm(key)`` returns the event the next ``notify(key)`` will set; every waiter of a key shares it, and
    ``notify`` replaces it with a fresh one for later arms. Keys nobody waits on cost nothing (the events are
    held weakly).
    """

    def __init__(self) -> None:
        self._events: weakref.WeakValueDictionary[Hashable, anyio.Event] = weakref.WeakValueDictionary()

    def __repr__(self) -> str:
        return f"WakeHub(keys={len(self._events)})"

    def arm(self, key: Hashable) -> anyio.Event:
        event = self._events.get(key)
        if event is None or event.is_set():
            event = anyio.Event()
            self._events[key] = event
        return event

    def notify(self, key: Hashable) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        """Wake every waiter (after a reconnect, when notifications may have been missed)."""
        events = list(self._events.values())
        self._events.clear()
        for event in events:
            event.set()


#: Read up to ``limit`` events with ``seq > after``, in order (raises ``ResyncRequired`` below the retained range).
ReadAfter = Callable[[int, int], Awaitable[list[Event]]]


class EventTail:
    """An async iterator over a session's events after ``after``, following new ones as they land.

    Cancellation-safe: cancelling ``__anext__`` (say, to send a heartbeat) loses nothing; the next call picks
    up where the last delivered event left off. ``after`` is always the seq of the last event delivered.
    """

    def __init__(
        self,
        read: ReadAfter,
        arm: Callable[[], Wakeup],
        key: Hashable,
        *,
        after: int = 0,
        wait_timeout: Callable[[], float],
        page_size: int = DEFAULT_PAGE,
    ) -> None:
        self._read = read
        self._arm = arm
        self._key = key
        self._after = after
        self._wait_timeout = wait_timeout
        self._page_size = page_size
        self._buffer: deque[Event] = deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"EventTail({self._key!r}, after={self._after})"

    @property
    def after(self) -> int:
        """The seq of the last event delivered (where a reconnect resumes)."""
        return self._after

    def __aiter__(self) -> EventTail:
        return self

    async def _fill(self) -> Wakeup:
        """Read the page after the last delivered seq into the buffer; return the wake-up armed before it."""
        woken = self._arm()  # before the read: an append racing it re-arms the loop
        page = await self._read(self._after, self._page_size)
        self._buffer.extend(e for e in page if e.seq > self._after)
        return woken

    async def start(self) -> None:
        """Read the first page now, so a missing session (``NotFound``) or a position below retention
        (``ResyncRequired``) is raised here, before a caller commits to streaming (say, sends HTTP headers).
        What it read is delivered by the next calls; calling it again (or never) is fine."""
        if not self._closed and not self._buffer:
            await self._fill()

    async def __anext__(self) -> Event:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._buffer:
                event = self._buffer.popleft()
                self._after = event.seq
                return event
            woken = await self._fill()
            if self._buffer:
                continue
            with anyio.move_on_after(self._wait_timeout()):
                await woken.wait()

    async def next(self, timeout: float | None = None, *, stop: StopSignal | None = None) -> Event | None:
        """The next event, or ``None`` if none came within ``timeout`` seconds (``None``: wait).

        ``stop`` (an ``anyio``/``asyncio``/``trio`` event, say a host's shutdown event) ends the wait early:
        once it is set, ``next`` returns ``None`` at once, without reading. An event already taken from the
        log is returned, never dropped.
        """
        if stop is None:
            return await self._next(timeout)
        if stop.is_set():
            return None
        if self._buffer:
            return await self.__anext__()
        got: Event | None = None
        failed: Exception | None = None
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            try:
                got = await self._next(timeout)  # cancellation-safe: a stop in mid-read loses nothing
            except Exception as exc:  # raised below as itself, not wrapped in an exception group
                failed = exc
            tg.cancel_scope.cancel()
        if failed is not None:
            raise failed
        return got

    async def _next(self, timeout: float | None) -> Event | None:
        if timeout is None:
            return await self.__anext__()
        with anyio.move_on_after(timeout):
            return await self.__anext__()
        return None

    async def aclose(self) -> None:
        self._closed = True
        self._buffer.clear()

    async def __aenter__(self) -> EventTail:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Followable(SessionWakeups, Protocol):
    """What :func:`subscribe` needs of a store: ``EventLog.read_after`` and the wake-up port."""

    async def read_after(self, session_id: str, after: int, limit: int) -> list[Event]: ...


class Waitable(SessionWakeups, Protocol):
    """What :func:`wait_pending` needs of a store: ``Inbox.pending`` and the wake-up port."""

    async def pending(self, session_id: str, *, limit: int = 100, cursor: str | None = None) -> Page[InboxItem]: ...


def _seq(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**62:
        raise InvalidInput(f"{what} must be an integer between 0 and {2**62}", field=what)
    return value


def subscribe(store: Followable, session_id: str, *, after: int = 0, page_size: int = DEFAULT_PAGE) -> EventTail:
    """Every event of the session with ``seq > after``, in order, then new ones as they land (an
    :class:`EventTail`). Arguments are checked here; the session is read on the first ``start``/``next``."""
    check_id(session_id, "ses", what="session_id")
    after = _seq(after, "after")

    async def read(position: int, limit: int) -> list[Event]:
        return await store.read_after(session_id, position, limit)

    return EventTail(
        read,
        lambda: store.arm(session_id, "events"),
        ("events", session_id),
        after=after,
        wait_timeout=store.poll_timeout,
        page_size=page_size,
    )


async def wait_pending(store: Waitable, session_id: str, *, timeout: float, limit: int = 100) -> Page[InboxItem]:
    """``pending``, but wait up to ``timeout`` seconds for something to be posted when nothing waits.

    The wake-up is armed before each read, so a post that commits during the read is never slept through;
    each wait is bounded by the store's poll timeout.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise InvalidInput("timeout must be a number of seconds >= 0", field="timeout")
    deadline = anyio.current_time() + timeout
    while True:
        woken = store.arm(session_id, "inbox")
        page = await store.pending(session_id, limit=limit)
        remaining = deadline - anyio.current_time()
        if page.items or remaining <= 0:
            return page
        with anyio.move_on_after(min(remaining, store.poll_timeout())):
            await woken.wait()
