"""Surviving the server: killed backends, a restarted or stopped server, a connection killed mid-call.

Real kills (``pg_terminate_backend``) and a real restart of the suite's server; nothing is mocked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from openma import Settings
from openma.adapters.postgres import PostgresClient
from openma.adapters.sql.backend import SqlStoreBackend
from openma.errors import StorageUnavailable
from openma.ports.tenancy import TenantRef
from openma.testing.pgserver import PgServer

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


def dbname_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def app_name() -> str:
    return f"openma-victim-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def backend(pg_url: str, app_name: str) -> AsyncIterator[SqlStoreBackend]:
    settings = Settings(
        postgres_url=pg_url,
        pg_application_name=app_name,
        pg_pool_min_size=1,
        pg_pool_max_size=4,
        pg_connect_timeout=2,
    )
    b = SqlStoreBackend("pg", await PostgresClient.open(pg_url, settings))
    try:
        yield b
    finally:
        await b.aclose()


def agents_of(backend: SqlStoreBackend, tenant_id: str) -> Any:
    async def ok() -> None:
        return None

    return backend.agents(TenantRef(tenant_id, ok))


async def grow_pool(backend: SqlStoreBackend, n: int) -> None:
    """Use ``n`` connections at once so the pool holds several idle ones afterwards."""
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(backend.client.fetch_one, "SELECT pg_sleep(0.05)")


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await anyio.sleep(0.02)


async def test_next_call_succeeds_after_every_backend_is_terminated(
    pg_server: PgServer, pg_url: str, backend: SqlStoreBackend
) -> None:
    tenant = await backend.tenants.create(name="acme")
    agents = agents_of(backend, tenant.id)
    agent = await agents.create(name="coder", model="m")
    await grow_pool(backend, 4)
    assert pg_server.terminate_backends(dbname_of(pg_url)) >= 4
    # Every pooled connection is dead now; each call below gets a working one.
    assert (await agents.get(agent.id)).name == "coder"
    await agents.update(agent.id, system="after the kill")
    assert len(await agents.list()) == 1
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(agents.get, agent.id)
    assert (await agents.get(agent.id)).version == 2


async def test_next_call_succeeds_after_a_server_restart(pg_server: PgServer, backend: SqlStoreBackend) -> None:
    tenant = await backend.tenants.create(name="acme")
    agents = agents_of(backend, tenant.id)
    agent = await agents.create(name="coder", model="m")
    await grow_pool(backend, 3)
    pg_server.restart()
    assert (await agents.get(agent.id)).name == "coder"
    second = await agents.create(name="second", model="m")
    assert {a.id for a in await agents.list()} == {agent.id, second.id}


async def test_a_stopped_server_fails_fast_and_the_pool_recovers(pg_server: PgServer, backend: SqlStoreBackend) -> None:
    tenant = await backend.tenants.create(name="acme")
    pg_server.halt()
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await backend.tenants.get(tenant.id)
        # No hang: bounded by pg_connect_timeout (2 s here).
        assert time.monotonic() - started < 6
    finally:
        pg_server.resume()
    deadline = time.monotonic() + 20
    while True:
        try:
            assert (await backend.tenants.get(tenant.id)).name == "acme"
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline, "the pool did not reconnect"
            await anyio.sleep(0.2)


async def test_a_write_killed_in_flight_fails_fast_and_writes_nothing(
    pg_server: PgServer, pg_url: str, backend: SqlStoreBackend, app_name: str
) -> None:
    """agents.create is one unit (agent row + version row); kill its connection between the two inserts."""
    tenant = await backend.tenants.create(name="acme")
    agents = agents_of(backend, tenant.id)
    dbname = dbname_of(pg_url)
    blocker = pg_server.connect(dbname)
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE agent_versions IN ACCESS EXCLUSIVE MODE")
    waiting_sql = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock' AND datname = %s"
    )
    outcome: list[BaseException] = []
    try:
        async with anyio.create_task_group() as tg:

            async def create() -> None:
                try:
                    await agents.create(name="doomed", model="m")
                except BaseException as exc:
                    outcome.append(exc)

            tg.start_soon(create)
            # The unit's first INSERT ran; its second waits on the lock, inside the open transaction.
            await wait_for(lambda: pg_server.execute(waiting_sql, (app_name, dbname)) != [])
            assert pg_server.execute("SELECT count(*) FROM agents", dbname=dbname) == [(0,)]  # not committed
            [(pid,)] = pg_server.execute(waiting_sql, (app_name, dbname))
            killed_at = time.monotonic()
            pg_server.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with anyio.fail_after(5):
                await wait_for(lambda: outcome != [])
            assert time.monotonic() - killed_at < 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert isinstance(outcome[0], StorageUnavailable), outcome
    assert pg_server.execute("SELECT count(*) FROM agents", dbname=dbname) == [(0,)]
    assert pg_server.execute("SELECT count(*) FROM agent_versions", dbname=dbname) == [(0,)]
    # And the next call works.
    made = await agents.create(name="survivor", model="m")
    assert [a.id for a in await agents.list()] == [made.id]


async def test_a_cancelled_write_is_all_or_nothing_and_the_pool_stays_usable(
    pg_server: PgServer, pg_url: str, backend: SqlStoreBackend, app_name: str
) -> None:
    """The caller gets control back at once; the unit, already sent whole, lands whole or not at all.

    (As on SQLite, where a cancelled unit runs to completion in its thread: cancelling a write leaves it in
    doubt, never half-done.)
    """
    tenant = await backend.tenants.create(name="acme")
    agents = agents_of(backend, tenant.id)
    dbname = dbname_of(pg_url)
    blocker = pg_server.connect(dbname)
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE agent_versions IN ACCESS EXCLUSIVE MODE")
    try:
        started = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            await agents.create(name="abandoned", model="m")
        assert scope.cancelled_caught
        assert time.monotonic() - started < 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    active = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
    await wait_for(lambda: pg_server.execute(active, (app_name,)) == [(0,)])
    [(n_agents,)] = pg_server.execute("SELECT count(*) FROM agents", dbname=dbname)
    assert pg_server.execute("SELECT count(*) FROM agent_versions", dbname=dbname) == [(n_agents,)]
    made = await agents.create(name="next", model="m")
    assert made.id in {a.id for a in await agents.list()}
