"""actor.sandbox(): the session's sandbox through the orchestrator, with snapshots across turns and deletes."""

from __future__ import annotations

from pathlib import Path

import pytest

from openma import Platform, Settings
from openma.adapters.telemetry import MemoryTelemetry

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        sqlite_path=str(tmp_path / "db.sqlite"),
        blob_url=f"file://{tmp_path}/blobs",
        local_sandbox_root=str(tmp_path / "sandboxes"),
    )


async def test_a_turn_runs_tools_in_the_sessions_sandbox_and_the_workspace_survives(settings: Settings) -> None:
    telemetry = MemoryTelemetry()
    async with Platform.open(settings, telemetry=telemetry) as oma:
        tenant = await oma.tenants.create(name="sbx")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="a", model="m")
        env = await t.environments.create(name="py", config={"env": {"GREETING": "hello"}})
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        async with t.sessions.actor(session.id) as actor:
            sandbox = await actor.sandbox()
            assert sandbox is await actor.sandbox()  # one per session
            result = await sandbox.exec('echo "$GREETING" > note.txt && cat note.txt', timeout=30)
            assert result.exit_code == 0 and result.stdout.strip() == "hello"
        # Releasing the actor snapshotted the workspace; the sandbox itself was kept for the next turn.
        assert [f["action"] for f in telemetry.of("sandbox.lifecycle")].count("snapshot") == 1
        orchestrator = await oma.sandboxes()
        await orchestrator.reap(idle_for=0)  # recycle it: the next turn warms a new one from the snapshot
        async with t.sessions.actor(session.id) as actor:
            sandbox = await actor.sandbox()
            assert (await sandbox.read_file("note.txt")) == b"hello\n"
        await t.sessions.delete(session.id)
        assert session.id not in orchestrator.sessions()
    assert telemetry.of("sandbox.exec")


async def test_sandbox_refuses_a_stale_actor(settings: Settings) -> None:
    from openma import LeaseLost

    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="sbx")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="a", model="m")
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        async with t.sessions.actor(session.id) as actor:
            pass
        with pytest.raises(LeaseLost):
            await actor.sandbox()
