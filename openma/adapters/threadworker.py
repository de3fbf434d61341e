"""A dedicated thread that owns one blocking resource (a SQLite connection) and runs calls on it.

Why not ``anyio.to_thread.run_sync`` for every call: on a small machine a hop through anyio's worker pool
costs about twice a hop to a thread that is already waiting on its own queue, and a SQLite point read or
commit is cheaper than either. On asyncio the calling task waits on a future that the thread completes with
``call_soon_threadsafe``; on other anyio backends (trio) the call goes through ``anyio.to_thread`` with a
limiter of one, which keeps calls on the resource serial.

Calls run in submission order. A call whose caller was cancelled still runs to completion in the thread
(its result is dropped), so the resource is never left half-way through a call.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import sniffio

T = TypeVar("T")

_STOP = object()


def _deliver(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class ThreadWorker:
    """One daemon thread and a FIFO of calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._limiter = anyio.CapacityLimiter(1)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"ThreadWorker({self.name!r}, closed={self._closed})"

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args, fut, loop = item
            try:
                result = fn(*args)
            except BaseException as exc:
                ok, value = False, exc
            else:
                ok, value = True, result
            try:
                loop.call_soon_threadsafe(_deliver, fut, ok, value)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread and return its result (or raise its exception)."""
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        if sniffio.current_async_library() == "asyncio":
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[T] = loop.create_future()
            self._queue.put((fn, args, fut, loop))
            return await fut
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def close(self, final: Callable[[], Any] | None = None) -> None:
        """Stop the thread after the calls already queued (and ``final``, if given) have run."""
        if self._closed:
            return
        self._closed = True
        if final is not None:
            done = threading.Event()

            def run_final() -> None:
                try:
                    final()
                finally:
                    done.set()

            self._queue.put((run_final, (), None, _NullLoop()))
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


class _NullLoop:
    def call_soon_threadsafe(self, *args: Any) -> None:
        return None
