"""Stores spread over two engines: ``{"default": "cf", "agents": "pg"}`` through the public facade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from openma import Platform, Settings
from openma.errors import Conflict, NotFound, VersionConflict
from openma.testing.pgserver import PgServer

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


def sqlite_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_agents_on_postgres_the_rest_on_sqlite(tmp_path: Path, pg_server: PgServer, pg_empty_url: str) -> None:
    db_path = tmp_path / "openma.db"
    dbname = pg_empty_url.rsplit("/", 1)[1]
    settings = Settings(
        sqlite_path=str(db_path),
        postgres_url=pg_empty_url,
        store_backends={"default": "cf", "agents": "pg"},
    )
    async with Platform.open(settings) as oma:
        assert sorted(oma.backends) == ["cf", "pg"]
        assert oma.backend("agents").name == "pg"
        assert oma.backend("tenants").name == "cf"
        assert oma.backend("environments").name == "cf"

        tenant = await oma.tenants.create(name="acme")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="coder", model="claude-sonnet-4-6", system="be brief", tools=[{"type": "x"}])
        env = await t.environments.create(name="py", config={"image": "python:3.12"})

        # Where the rows really are.
        pg = pg_server.execute
        assert pg("SELECT tenant_id, id, name, version FROM agents", dbname=dbname) == [
            (tenant.id, agent.id, "coder", 1)
        ]
        assert pg("SELECT agent_id, version FROM agent_versions", dbname=dbname) == [(agent.id, 1)]
        assert pg("SELECT count(*) FROM tenants", dbname=dbname) == [(0,)]
        assert pg("SELECT count(*) FROM environments", dbname=dbname) == [(0,)]
        assert sqlite_rows(db_path, "SELECT id, name FROM tenants") == [(tenant.id, "acme")]
        assert sqlite_rows(db_path, "SELECT id FROM environments") == [(env.id,)]
        assert sqlite_rows(db_path, "SELECT count(*) FROM agents") == [(0,)]

        # The facade behaves as on one engine.
        assert await t.agents.get(agent.id) == agent
        updated = await t.agents.update(agent.id, expected_version=1, system="be briefer")
        assert updated.version == 2
        with pytest.raises(VersionConflict):
            await t.agents.update(agent.id, expected_version=1, system="stale")
        assert [v.version for v in await t.agents.versions(agent.id)] == [2, 1]
        page = await t.agents.list(q="CODER")
        assert [a.id for a in page] == [agent.id]
        assert (await t.environments.get(env.id)).config == {"image": "python:3.12"}

        # Tenancy is checked against the tenants store, on the other engine.
        with pytest.raises(NotFound):
            await oma.tenant("tnt_01h0000000000000000000000z").agents.create(name="orphan", model="m")
        await oma.tenants.archive(tenant.id)
        with pytest.raises(Conflict):
            await oma.tenant(tenant.id).agents.create(name="late", model="m")
        assert pg("SELECT count(*) FROM agents", dbname=dbname) == [(1,)]

        archived = await t.agents.archive(agent.id)
        assert archived.archived_at is not None
        await t.agents.delete(agent.id)
        with pytest.raises(NotFound):
            await t.agents.get(agent.id)
        assert pg("SELECT count(*) FROM agents", dbname=dbname) == [(0,)]

    # Both engines were migrated by Platform.open, each with its own migration files.
    assert pg("SELECT count(*) FROM openma_migrations", dbname=dbname)[0][0] >= 1
    assert sqlite_rows(db_path, "SELECT count(*) FROM openma_migrations")[0][0] >= 1
