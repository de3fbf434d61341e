"""The pooled Postgres connection: psycopg's async connection with a cheaper wait on its socket.

psycopg runs every operation as a generator that says when it would block (wait for the socket to be readable
or writable); ``AsyncConnection.wait`` drives it. psycopg's own loop registers the socket with the event loop,
arms a timer, awaits, and unregisters again for *every* wait, and an operation that receives a large result
waits once per chunk the server sends: a page of 1 000 events of 1 KB arrives in about 80 chunks, and those
registrations (two ``epoll_ctl`` calls, a handle and a timer each) cost about a fifth of the client's time of
the read. :class:`Connection` keeps the socket registered for reading from the first wait of an operation to
its end, and arms no timer (the timer only polled for an interrupt, which asyncio delivers to the awaiting
task anyway), so a wait costs one future and one zero-timeout ``poll(2)``.

Everything else is psycopg's: a wait with a ``timeout`` runs psycopg's own loop, and an interrupted operation
(the task cancelled, ``KeyboardInterrupt``) is handed back to psycopg's handling, which cancels the query in
the server and drains the connection, as it does for a connection of its own class.

Imported when a client opens (the driver is there by then), never at import time of the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from time import monotonic
from typing import Any, Final, TypeVar, cast

from psycopg import AsyncConnection, AsyncCursor, OperationalError
from psycopg.rows import Row

from openma.adapters.pg_connect import READ as _R
from openma.adapters.pg_connect import WRITE as _W
from openma.adapters.pg_connect import ready_now as _ready_now

__all__ = ["Connection"]

_RV = TypeVar("_RV")
#: Longest run of operations that never had to wait before the event loop gets a turn (as psycopg does).
_MAX_BUSY: Final = 0.005
_last_yield = 0.0


class _Interrupted:
    """A stand-in for an interrupted operation's generator: raises the interrupt once, then is the generator.

    Given to psycopg's own ``wait``, the interrupt surfaces where psycopg expects it (from its wait loop), so
    psycopg cancels the query and drains the rest of the operation through this object, then re-raises.
    """

    def __init__(self, exc: BaseException, gen: Generator[Any, Any, Any]) -> None:
        self._exc: BaseException | None = exc
        self._gen = gen

    def __iter__(self) -> _Interrupted:
        return self

    def __next__(self) -> Any:
        exc, self._exc = self._exc, None
        if exc is not None:
            raise exc
        return next(self._gen)

    def send(self, value: Any) -> Any:
        return self._gen.send(value)


async def _drive(gen: Generator[int, int, _RV], fd: int) -> _RV:
    """Run ``gen`` to its end, waiting on ``fd`` as it asks, the socket registered for reading throughout.

    A wake-up is checked with a zero-timeout ``poll(2)`` before the generator hears of it: with the socket left
    registered, the event loop may report a readiness the generator has already consumed.
    """
    global _last_yield
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] | None = None

    def wakeup() -> None:
        if future is not None and not future.done():
            future.set_result(None)

    reading = False
    try:
        try:
            wanted = next(gen)
        except StopIteration as stop:
            if monotonic() - _last_yield >= _MAX_BUSY:
                await asyncio.sleep(0)
                _last_yield = monotonic()
            result: _RV = stop.value
            return result
        while True:
            if wanted & _W:  # a socket asked for writing is nearly always writable: no loop round trip
                if monotonic() - _last_yield >= _MAX_BUSY:
                    await asyncio.sleep(0)
                    _last_yield = monotonic()
                now = _ready_now(fd, wanted)
                if now:
                    wanted = gen.send(now)
                    continue
            if wanted & _R and not reading:
                loop.add_reader(fd, wakeup)
                reading = True
            elif reading and not wanted & _R:
                loop.remove_reader(fd)
                reading = False
            if wanted & _W:
                loop.add_writer(fd, wakeup)
            try:
                now = 0
                while not now:
                    future = loop.create_future()
                    try:
                        await future
                    finally:
                        future = None
                    now = _ready_now(fd, wanted)
            finally:
                _last_yield = monotonic()
                if wanted & _W:
                    loop.remove_writer(fd)
            wanted = gen.send(now)
    except OSError as exc:
        raise OperationalError("connection socket closed") from exc
    except StopIteration as stop:
        done: _RV = stop.value
        return done
    finally:
        if reading:
            loop.remove_reader(fd)


class Connection(AsyncConnection[Row]):
    """psycopg's ``AsyncConnection`` with the cheaper wait (see the module docstring) and a kept cursor."""

    _kept_cursor: AsyncCursor[Row] | None = None

    def kept_cursor(self) -> AsyncCursor[Row]:
        """One cursor of this connection, kept across calls, for results read whole at once (a write unit's).

        ``execute`` on the connection builds a new cursor (and its map of adapters) every time. A cursor holds
        its last result until its next ``execute``, so results that may be large should not go through it.
        """
        cur = self._kept_cursor
        if cur is None or cur.closed:
            cur = self._kept_cursor = self.cursor()
        return cur

    async def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        timeout = kwargs.get("timeout", args[1] if len(args) > 1 else None)
        if timeout is not None:
            return await super().wait(gen, *args, **kwargs)
        try:
            return await _drive(gen, self.pgconn.socket)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit) as exc:
            return await super().wait(cast(Any, _Interrupted(exc, gen)), *args, **kwargs)
