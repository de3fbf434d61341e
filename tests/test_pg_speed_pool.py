"""The Postgres client's kept connection, and what one append costs on the wire.

The client keeps the last connection given back for its next call (no pool checkout and return on a run of
calls), unless a task waits for the pool; a kept connection that the server dropped is replaced, every 1 000th
return goes through the pool, and closing the client closes it. A lone statement of a write unit runs on a
cursor kept per connection. A one-event append is one operation on the connection (one round trip) and runs as
a statement prepared in the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest

from openma.adapters import postgres
from openma.adapters.pg_wait import Connection
from openma.adapters.postgres import PostgresClient
from openma.adapters.sql.backend import SqlStoreBackend
from openma.ports.sql import Statement
from openma.ports.tenancy import TenantRef
from openma.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _open(pg_url: str, *, size: int) -> PostgresClient:
    settings = Settings(postgres_url=pg_url, pg_pool_min_size=1, pg_pool_max_size=size, pg_connect_timeout=5.0)
    return await PostgresClient.open(pg_url, settings)


@pytest.fixture
async def client(pg_url: str) -> AsyncIterator[PostgresClient]:
    c = await _open(pg_url, size=4)
    try:
        yield c
    finally:
        await c.aclose()


async def _pid(client: PostgresClient) -> int:
    row = await client.fetch_one("SELECT pg_backend_pid() AS pid")
    assert row is not None
    return int(row["pid"])


def _requests(client: PostgresClient) -> int:
    return int(client.pool.get_stats().get("requests_num", 0))


async def test_a_run_of_calls_reuses_one_connection_without_the_pool(client: PostgresClient) -> None:
    first = await _pid(client)
    before = _requests(client)
    pids = [await _pid(client) for _ in range(20)]
    async with client.transaction() as tx:
        row = await tx.fetch_one("SELECT pg_backend_pid() AS pid")
    assert pids == [first] * 20 and row is not None and row["pid"] == first
    assert _requests(client) == before


async def test_a_kept_connection_the_server_dropped_is_replaced(pg_url: str, client: PostgresClient) -> None:
    kept = await _pid(client)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (kept,))
        with anyio.fail_after(10):
            while True:  # the server's FATAL message reaches the kept socket once the backend is gone
                cur = await admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (kept,))
                got = await cur.fetchone()
                if got is not None and got[0] == 0:
                    break
                await anyio.sleep(0.01)
    assert await _pid(client) != kept


async def test_a_task_waiting_for_the_pool_gets_the_connection(pg_url: str) -> None:
    client = await _open(pg_url, size=1)
    try:
        await _pid(client)  # the only connection is now the kept one
        holding = anyio.Event()
        release = anyio.Event()
        pids: list[int] = []

        async def holder() -> None:
            async with client.transaction() as tx:
                row = await tx.fetch_one("SELECT pg_backend_pid() AS pid")
                assert row is not None
                pids.append(int(row["pid"]))
                holding.set()
                await release.wait()

        async def waiter() -> None:
            await holding.wait()
            pids.append(await _pid(client))  # waits in the pool until the holder gives the connection back

        with anyio.fail_after(4):  # under the pool's 5 s timeout: a connection kept from a waiter fails here
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                tg.start_soon(waiter)
                await holding.wait()
                while True:  # until the waiter is queued in the pool
                    if client.pool.get_stats().get("requests_waiting", 0):
                        break
                    await anyio.sleep(0.01)
                release.set()
        assert len(pids) == 2 and pids[0] == pids[1]
    finally:
        await client.aclose()


async def test_every_so_many_returns_go_through_the_pool(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "_HOT_RETURNS", 3)
    client = await _open(pg_url, size=2)
    try:
        before = _requests(client)
        for _ in range(9):
            await _pid(client)
        assert _requests(client) - before == 3
    finally:
        await client.aclose()


async def test_closing_the_client_closes_the_kept_connection(pg_url: str) -> None:
    client = await _open(pg_url, size=2)
    await _pid(client)
    kept = client._hot
    assert kept is not None and not kept.closed
    await client.aclose()
    assert kept.closed and client._hot is None


async def test_a_one_event_append_is_one_round_trip_of_a_prepared_statement(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(postgres_url=pg_url, pg_pool_min_size=1, pg_pool_max_size=1)
    backend = SqlStoreBackend("pg", await PostgresClient.open(pg_url, settings))
    try:
        tenant = await backend.tenants.create(name="t")
        store = backend.sessions(TenantRef(tenant.id))
        session = await store.create(
            agent_id="agt_01h0000000000000000000000z",
            environment_id="env_01h0000000000000000000000z",
            agent_snapshot={},
            environment_snapshot={},
        )
        for n in range(6):  # psycopg prepares a statement on its fifth run
            await store.append(session.id, [{"type": "x.event", "n": n}])
        waits: list[Any] = []
        original = Connection.wait

        async def counted(self: Connection[Any], gen: Any, *args: Any, **kwargs: Any) -> Any:
            waits.append(gen)
            return await original(self, gen, *args, **kwargs)

        monkeypatch.setattr(Connection, "wait", counted)
        for n in range(3):
            waits.clear()
            written = await store.append(session.id, [{"type": "x.event", "n": 100 + n}])
            assert [e.seq for e in written] == [7 + n]
            assert len(waits) == 1
        monkeypatch.undo()
        row = await backend.client.fetch_one(
            "SELECT count(*) AS n FROM pg_prepared_statements"
            " WHERE statement LIKE 'WITH s AS (UPDATE sessions SET last_seq%'"
        )
        assert row is not None and row["n"] == 1
    finally:
        await backend.aclose()


async def test_the_kept_cursor_serves_one_statement_units_after_a_failure_and_keeps_earlier_rows(
    client: PostgresClient,
) -> None:
    await client.execute("CREATE TABLE kept_t (id int PRIMARY KEY, v text)")
    insert = "INSERT INTO kept_t (id, v) VALUES (?, ?) RETURNING id, v"
    first = await client.run_batch([Statement(insert, [1, "a"], fetch=True)])
    with pytest.raises(psycopg.errors.UniqueViolation):
        await client.run_batch([Statement(insert, [1, "b"], fetch=True)])
    second = await client.run_batch([Statement(insert, [2, "c"], fetch=True)])
    assert first.rows == [[{"id": 1, "v": "a"}]] and second.rows == [[{"id": 2, "v": "c"}]]
    kept = client._hot
    assert kept is not None and kept.kept_cursor() is kept.kept_cursor()
    assert await client.fetch_all("SELECT id, v FROM kept_t ORDER BY id") == [{"id": 1, "v": "a"}, {"id": 2, "v": "c"}]
