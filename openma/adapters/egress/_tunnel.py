"""The egress proxy's pass-through tunnel: a ``CONNECT`` relayed as bytes, without terminating TLS.

Used only when the proxy's ``passthrough`` is on, the session's networking is ``unrestricted`` and nothing
would be injected for the ``CONNECT`` host (see :class:`~openma.adapters.egress.proxy.EgressProxy`): the
destination was decided and its address checked before this runs, and the bytes go to that address only.
"""

from __future__ import annotations

import time

import anyio

from openma.adapters.egress._http import STREAM_ERRORS, Exchange
from openma.adapters.egress._net import CHUNK, SocketStream


async def splice(client: SocketStream, upstream: SocketStream, exchange: Exchange, idle_timeout: float) -> None:
    """Copy bytes both ways until both sides have closed (each EOF is passed on as a half-close), either side
    fails, or nothing moved either way for ``idle_timeout`` seconds. Counts ``bytes_up``/``bytes_down``."""
    last = time.monotonic()
    finished = 0

    async def pump(source: SocketStream, sink: SocketStream, up: bool) -> None:
        nonlocal last, finished
        try:
            with memoryview(bytearray(CHUNK)) as buffer:
                while count := await source.receive_into(buffer):
                    await sink.send(buffer[:count])
                    last = time.monotonic()
                    if up:
                        exchange.bytes_up += count
                    else:
                        exchange.bytes_down += count
            await sink.send_eof()
        except STREAM_ERRORS:
            group.cancel_scope.cancel()
            return
        finished += 1
        if finished == 2:
            group.cancel_scope.cancel()

    async def watch() -> None:
        while True:
            idle = time.monotonic() - last
            if idle >= idle_timeout:
                group.cancel_scope.cancel()
                return
            await anyio.sleep(idle_timeout - idle)

    async with anyio.create_task_group() as group:
        group.start_soon(pump, client, upstream, True)
        group.start_soon(pump, upstream, client, False)
        group.start_soon(watch)


__all__ = ["splice"]
