"""Migrations on Postgres: the advisory lock is real, and concurrent starters apply each file exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import anyio
import pytest

from openma import Settings
from openma.adapters.postgres import MIGRATION_LOCK_KEY, PostgresClient
from openma.adapters.sql.migrate import load_migrations, migrate, status
from openma.testing.pgserver import PgServer

pytestmark = pytest.mark.postgres

SHIPPED = [m.name for m in load_migrations("postgres")]

MIGRATOR = textwrap.dedent(
    """
    import asyncio, json, sys
    from openma import Settings
    from openma.adapters.postgres import PostgresClient
    from openma.adapters.sql.migrate import migrate

    async def main(url):
        client = await PostgresClient.open(url, Settings(postgres_url=url, pg_pool_min_size=1))
        print("ready", flush=True)
        sys.stdin.readline()
        try:
            print(json.dumps(await migrate(client)), flush=True)
        finally:
            await client.aclose()

    asyncio.run(main(sys.argv[1]))
    """
)


def applied_rows(server: PgServer, url: str) -> list[str]:
    dbname = url.rsplit("/", 1)[1]
    return [r[0] for r in server.execute("SELECT name FROM openma_migrations ORDER BY name", dbname=dbname)]


def test_concurrent_migrator_processes_apply_each_migration_once(pg_server: PgServer, pg_empty_url: str) -> None:
    """Four processes, each connected and waiting, are released at once against one empty database."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, pg_empty_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sorted(results, key=len) == [[], [], [], SHIPPED]
    assert applied_rows(pg_server, pg_empty_url) == SHIPPED


@pytest.mark.anyio
async def test_concurrent_migrator_connections_apply_each_migration_once(
    pg_server: PgServer, pg_empty_url: str
) -> None:
    clients = [
        await PostgresClient.open(pg_empty_url, Settings(postgres_url=pg_empty_url, pg_pool_min_size=1))
        for _ in range(6)
    ]
    results: list[list[str]] = []
    try:

        async def run(client: PostgresClient) -> None:
            results.append(await migrate(client))

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(run, client)
        assert sorted(results, key=len) == [[]] * 5 + [SHIPPED]
        assert all(s.applied for s in await status(clients[0]))
        assert await migrate(clients[0]) == []
    finally:
        for client in clients:
            await client.aclose()
    assert applied_rows(pg_server, pg_empty_url) == SHIPPED


@pytest.mark.anyio
async def test_migrate_waits_for_the_advisory_lock(pg_server: PgServer, pg_empty_url: str) -> None:
    dbname = pg_empty_url.rsplit("/", 1)[1]
    holder = pg_server.connect(dbname)
    client = await PostgresClient.open(pg_empty_url, Settings(postgres_url=pg_empty_url))
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        done: list[list[str]] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                done.append(await migrate(client))

            tg.start_soon(run)
            waiting = (
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s"
            )
            for _ in range(3000):  # until the migrator is queued on the advisory lock, inside migrate()
                if await anyio.to_thread.run_sync(pg_server.execute, waiting, (dbname,)) == [(1,)]:
                    break
                await anyio.sleep(0.01)
            else:
                raise AssertionError("migrate() never queued on the advisory lock")
            assert done == []
            assert pg_server.execute("SELECT to_regclass('openma_migrations') IS NULL", dbname=dbname) == [(True,)]
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        assert done == [SHIPPED]
    finally:
        holder.close()
        await client.aclose()
