"""``t.sessions`` through the public facade: snapshots frozen at creation, the DESIGN example, spill to the
platform's blob store, and sessions on another engine than the agents they were made from."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import openma
from openma import Conflict, InvalidInput, NotFound, Platform, Settings
from openma.testing.pgserver import PgServer
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(sqlite_path=str(tmp_path / "p.db"), blob_url=f"file://{tmp_path}/blobs", event_spill_bytes=2_000)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_design_example(settings: Settings) -> None:
    async with openma.Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="acme")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="coder", model="claude-sonnet-4-6", system="...", tools=[{"type": "x"}])
        env = await t.environments.create(name="py", config={"image": "python:3.12"})
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, title="demo")
        [queued] = await t.sessions.post(
            session.id, [{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]
        )
        [promoted] = await t.sessions.unfenced_promote(session.id, [queued.event_id])
        await t.sessions.unfenced_append(
            session.id, [{"type": "agent.message", "content": [{"type": "text", "text": "hello"}]}]
        )
        page = await t.sessions.events(session.id, after=0, limit=100)
        assert [e.type for e in page] == ["user.message", "agent.message"] and page.next_cursor is None
        assert page.items[0] == promoted
        seen = []
        with anyio.fail_after(10):
            async for event in t.sessions.subscribe(session.id, after=0):
                seen.append(event.seq)
                if event.seq == 2:
                    break
        assert seen == [1, 2]


async def test_snapshots_are_frozen_at_creation(settings: Settings) -> None:
    async with Platform.open(settings) as oma:
        t = oma.tenant(await oma.tenants.create(name="acme"))
        agent = await t.agents.create(name="coder", model="m1", system="v1", tools=[{"type": "custom", "name": "a"}])
        env = await t.environments.create(name="py", config={"image": "python:3.11"})
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, metadata={"k": "v"})
        await t.agents.update(agent.id, system="v2", model="m2")
        await t.environments.update(env.id, config={"image": "python:3.13"})
        got = await t.sessions.get(session.id)
        assert got.agent["system"] == "v1" and got.agent["model"] == "m1" and got.agent["version"] == 1
        assert got.agent["tools"] == [{"type": "custom", "name": "a"}]
        assert got.environment["config"] == {"image": "python:3.11"}
        assert (await t.sessions.list(agent_id=agent.id)).items == [got]


async def test_create_checks_agent_and_environment(settings: Settings) -> None:
    async with Platform.open(settings) as oma:
        t = oma.tenant(await oma.tenants.create(name="acme"))
        other = oma.tenant(await oma.tenants.create(name="other"))
        agent = await t.agents.create(name="coder", model="m")
        env = await t.environments.create(name="py")
        with pytest.raises(NotFound):  # another tenant's agent is not yours
            await other.sessions.create(agent_id=agent.id, environment_id=env.id)
        with pytest.raises(InvalidInput):
            await t.sessions.create(agent_id="coder", environment_id=env.id)
        await t.agents.archive(agent.id)
        with pytest.raises(Conflict):
            await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        assert len(await t.sessions.list()) == 0


async def test_spilled_events_live_in_the_tenants_blob_store(settings: Settings) -> None:
    async with Platform.open(settings) as oma:
        t = oma.tenant(await oma.tenants.create(name="acme"))
        agent = await t.agents.create(name="coder", model="m")
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        big = {"type": "user.message", "content": [{"type": "text", "text": "ж" * 5_000}]}
        [event] = await t.sessions.unfenced_append(session.id, [big])
        internal = oma.blobs.for_tenant(t.tenant_id, internal=True)
        [blob] = (await internal.list(f".openma/sessions/{session.id}/")).items
        assert blob.key.startswith(f".openma/sessions/{session.id}/events/{event.id}.")
        assert len(await t.blobs.list()) == 0  # the tenant's own view never shows it
        assert (await t.sessions.get_event(session.id, event.id)).data == {**big, "id": event.id}
        await t.sessions.delete(session.id)
        assert len(await internal.list(f".openma/sessions/{session.id}/")) == 0


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the Postgres engine runs on asyncio only
async def test_sessions_on_postgres_agents_on_sqlite(tmp_path: Path, pg_server: PgServer, pg_empty_url: str) -> None:
    settings = Settings(
        sqlite_path=str(tmp_path / "openma.db"),
        postgres_url=pg_empty_url,
        blob_url=f"file://{tmp_path}/blobs",
        store_backends={"default": "cf", "sessions": "pg"},
        root_secret=ROOT_SECRET,
    )
    dbname = pg_empty_url.rsplit("/", 1)[1]
    async with Platform.open(settings) as oma:
        t = oma.tenant(await oma.tenants.create(name="acme"))
        agent = await t.agents.create(name="coder", model="m", system="be brief")
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        await t.sessions.unfenced_append(session.id, [{"type": "agent.message", "content": []}])
        assert pg_server.execute("SELECT id, agent_id FROM sessions", dbname=dbname) == [(session.id, agent.id)]
        assert pg_server.execute("SELECT seq, type FROM session_events", dbname=dbname) == [(1, "agent.message")]
        assert (await t.sessions.get(session.id)).agent["system"] == "be brief"
