"""The pooled Postgres connection's own wait on its socket (openma.adapters.pg_wait).

Driven against a real server (large results that arrive in many chunks, a query cancelled while it runs) and,
for the waiting loop itself, against a real socket pair.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Generator

import anyio
import pytest
from psycopg import OperationalError

from openma.adapters.pg_wait import Connection, _drive
from openma.adapters.postgres import PostgresClient
from openma.settings import Settings
from openma.testing.pgserver import PgServer

pytestmark = pytest.mark.anyio

_R, _W = 1, 2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def app_name() -> str:
    return f"openma-wait-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(pg_url: str, app_name: str) -> AsyncIterator[PostgresClient]:
    settings = Settings(postgres_url=pg_url, pg_application_name=app_name, pg_pool_min_size=1, pg_pool_max_size=1)
    c = await PostgresClient.open(pg_url, settings)
    try:
        yield c
    finally:
        await c.aclose()


async def test_the_pool_hands_out_the_waiting_class(client: PostgresClient) -> None:
    conn = await client.pool.getconn()
    try:
        assert isinstance(conn, Connection)
    finally:
        await client.pool.putconn(conn)


async def test_a_result_of_many_chunks_arrives_whole_and_in_order(client: PostgresClient) -> None:
    rows = await client.fetch_tuples(
        "SELECT n, repeat(chr(65 + n % 26), 1024) FROM generate_series(1, 3000) AS n ORDER BY n"
    )
    assert [r[0] for r in rows] == list(range(1, 3001))
    assert all(r[1] == chr(65 + r[0] % 26) * 1024 for r in rows)
    dicts = await client.fetch_all("SELECT n FROM generate_series(1, 3000) AS n ORDER BY n")
    assert [d["n"] for d in dicts] == list(range(1, 3001))


async def test_a_cancelled_query_stops_in_the_server_and_its_connection_serves_the_next_call(
    pg_server: PgServer, client: PostgresClient, app_name: str
) -> None:
    """Cancelling the task hands the operation back to psycopg, which cancels the query and keeps the connection."""
    before = await client.fetch_one("SELECT pg_backend_pid() AS pid")
    sleeping = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
        " AND query LIKE 'SELECT pg_sleep%%'"
    )
    task = asyncio.ensure_future(client.fetch_one("SELECT pg_sleep(30)"))
    deadline = time.monotonic() + 10
    while pg_server.execute(sleeping, (app_name,)) != [(1,)]:
        assert time.monotonic() < deadline, "the query never started"
        await asyncio.sleep(0.02)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5
    assert pg_server.execute(sleeping, (app_name,)) == [(0,)]
    assert await client.fetch_one("SELECT pg_backend_pid() AS pid") == before  # the same connection, reused


async def test_a_call_cut_off_by_a_cancel_scope_returns_at_once_and_the_pool_serves_the_next_call(
    client: PostgresClient,
) -> None:
    started = time.monotonic()
    with anyio.move_on_after(0.3) as scope:
        await client.fetch_one("SELECT pg_sleep(30)")
    assert scope.cancelled_caught and time.monotonic() - started < 5
    assert await client.fetch_one("SELECT 42 AS n") == {"n": 42}


def _reads(sock: socket.socket, chunks: int) -> Generator[int, int, bytes]:
    """A generator in psycopg's style: waits until ``chunks`` messages have been read from ``sock``."""
    got: list[bytes] = []
    while len(got) < chunks:
        ready = yield _R
        assert ready & _R
        got.append(sock.recv(65536))
    return b"".join(got)


async def test_the_loop_waits_through_many_chunks_and_writes_without_a_round_trip() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async with anyio.create_task_group() as tg:

            async def feed() -> None:
                for k in range(5):
                    await anyio.sleep(0.01)
                    b.send(bytes([65 + k]) * 10)

            tg.start_soon(feed)
            assert await _drive(_reads(a, 5), a.fileno()) == b"".join(bytes([65 + k]) * 10 for k in range(5))

        def write_then_read() -> Generator[int, int, str]:
            ready = yield _W
            assert ready & _W
            a.send(b"ping")
            ready = yield _R
            assert ready & _R
            return a.recv(16).decode()

        async with anyio.create_task_group() as tg:

            async def echo() -> None:
                await anyio.sleep(0.01)
                b.send(b.recv(16).upper())

            tg.start_soon(echo)
            assert await _drive(write_then_read(), a.fileno()) == "PING"
    finally:
        a.close()
        b.close()


async def test_a_socket_error_is_an_operational_error() -> None:
    a, b = socket.socketpair()

    def broken() -> Generator[int, int, None]:
        yield _W
        raise OSError("gone")

    try:
        with pytest.raises(OperationalError, match="socket closed"):
            await _drive(broken(), a.fileno())
    finally:
        a.close()
        b.close()
