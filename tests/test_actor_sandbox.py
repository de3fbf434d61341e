"""actor.sandbox(): the session's sandbox through the orchestrator, with snapshots across turns and deletes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from openma import Platform, Settings
from openma.adapters.sandboxes.local import LocalLimits, LocalSandboxConfig, LocalSandboxProvider
from openma.adapters.telemetry import MemoryTelemetry
from openma.core.orchestrator import MemorySnapshotIndex, SandboxOrchestrator
from openma.ports.sandbox import SandboxSpec

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
        orchestrator = await oma.sandbox_orchestrator()
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


# -- remote providers (the E2B and Daytona fakes): a sandbox gone at the provider, restarts, exit 137 -----------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["e2b", "daytona"])
def remote(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """``(fake, provider)`` for one remote provider."""
    which = str(request.param)
    return request.getfixturevalue(f"{which}_fake").fake, request.getfixturevalue(f"{which}_provider")


def _actions(telemetry: MemoryTelemetry) -> list[str]:
    return [f["action"] for f in telemetry.of("sandbox.lifecycle")]


async def test_a_remote_sandbox_gone_at_the_provider_is_replaced_with_its_workspace(
    remote: tuple[Any, Any], sandbox_blobs: Any, remote_spec: Callable[..., SandboxSpec]
) -> None:
    _, provider = remote
    telemetry = MemoryTelemetry()
    orch = SandboxOrchestrator(provider, sandbox_blobs, telemetry, index=MemorySnapshotIndex())
    spec = remote_spec()
    try:
        sb = await orch.get(spec.tenant_id, spec.session_id, spec)
        await sb.write_file("work.txt", b"saved")
        await orch.idle(spec.session_id)
        dead = sb.id
        await provider.destroy_id(dead)  # killed at the provider: every call to it now says it is gone
        result = await sb.exec("cat work.txt", timeout=30, tool="bash")
        assert (result.exit_code, result.stdout) == (0, "saved")
        assert sb.id != dead
        assert _actions(telemetry)[-4:] == ["gone", "created", "restored", "replaced"]
        gone = next(f for f in telemetry.of("sandbox.lifecycle") if f["action"] == "gone")
        assert (gone["sandbox_id"], gone["error"]) == (dead, "sandbox_gone")
        # A file call finds the replacement's sandbox gone too, and is served all the same.
        await provider.destroy_id(sb.id)
        assert await sb.read_file("work.txt") == b"saved"
    finally:
        await orch.aclose()


async def test_a_restarted_host_reattaches_to_the_remote_sandbox_or_replaces_it(
    remote: tuple[Any, Any], sandbox_blobs: Any, remote_spec: Callable[..., SandboxSpec]
) -> None:
    _, provider = remote
    index = MemorySnapshotIndex()
    spec = remote_spec()
    first = SandboxOrchestrator(provider, sandbox_blobs, index=index)
    sb = await first.get(spec.tenant_id, spec.session_id, spec)
    await sb.write_file("snap.txt", b"snapshotted")
    await first.idle(spec.session_id)
    await sb.write_file("live.txt", b"live only")
    kept = sb.id
    # The host dies (its orchestrator is never closed); a new one finds the sandbox by the record.
    telemetry = MemoryTelemetry()
    second = SandboxOrchestrator(provider, sandbox_blobs, telemetry, index=index)
    again = await second.get(spec.tenant_id, spec.session_id, spec)
    assert again.id == kept
    assert await again.read_file("live.txt") == b"live only"
    assert _actions(telemetry) == ["reattached"]
    # This one dies too, and the sandbox expires at the provider before anyone comes back.
    await provider.destroy_id(kept)
    telemetry = MemoryTelemetry()
    third = SandboxOrchestrator(provider, sandbox_blobs, telemetry, index=index)
    try:
        fresh = await third.get(spec.tenant_id, spec.session_id, spec)
        assert fresh.id != kept
        assert await fresh.read_file("snap.txt") == b"snapshotted"
        assert not await fresh.exists("live.txt")
        assert _actions(telemetry) == ["reattach_failed", "created", "restored"]
        assert await index.sandbox_id(spec.tenant_id, spec.session_id) == fresh.id
    finally:
        await third.aclose()


async def test_a_memory_kill_is_out_of_memory_on_every_adapter(
    remote: tuple[Any, Any], sandbox_blobs: Any, remote_spec: Callable[..., SandboxSpec], tmp_path: Path
) -> None:
    _, provider = remote
    telemetry = MemoryTelemetry()
    orch = SandboxOrchestrator(provider, sandbox_blobs, telemetry, index=MemorySnapshotIndex())
    # The fake runs commands on this machine: point the kernel's OOM counter at a file the command bumps.
    counter = tmp_path / "memory.events"
    counter.write_text("oom_kill 0\n")
    spec = remote_spec(options={"oom_counters": [str(counter)]})
    try:
        sb = await orch.get(spec.tenant_id, spec.session_id, spec)
        before = sb.id
        await sb.write_file("work.txt", b"before the kill")
        result = await sb.exec(f"printf 'oom_kill 1\\n' > {counter}; kill -KILL $$", timeout=30, tool="bash")
        assert (result.exit_code, result.oom_killed) == (137, True)
        assert _actions(telemetry)[-3:] == ["oom", "snapshot", "destroyed"]
        assert orch.sessions()[spec.session_id] is None
        assert telemetry.of("tool.call")[-1]["outcome"] == "oom"
        assert (await sb.exec("cat work.txt", timeout=30)).stdout == "before the kill"
        assert sb.id != before
        # A command that runs past its deadline also exits 137 remotely: that is a timeout, not memory.
        slow = await sb.exec("sleep 5", timeout=0.5)
        assert slow.timed_out and not slow.oom_killed
        assert _actions(telemetry)[-1] == "restored"
    finally:
        await orch.aclose()


async def test_exit_137_from_a_local_sandbox_that_cannot_detect_memory_kills_is_out_of_memory(
    tmp_path: Path, sandbox_blobs: Any
) -> None:
    provider = LocalSandboxProvider(
        LocalSandboxConfig(root=str(tmp_path / "sbx"), kill_grace=0.5, limits=LocalLimits(memory_bytes=0)),
        blobs=sandbox_blobs,
    )
    detecting = LocalSandboxProvider(
        LocalSandboxConfig(root=str(tmp_path / "sbx2"), kill_grace=0.5), blobs=sandbox_blobs
    )
    blind = SandboxOrchestrator(provider, sandbox_blobs, index=MemorySnapshotIndex())
    precise = SandboxOrchestrator(detecting, sandbox_blobs, index=MemorySnapshotIndex())
    try:
        sb = await blind.get("tnt_01m8000000000000000000000a", "ses_01m8000000000000000000000c")
        assert "oom_detection" not in sb.capabilities
        assert (await sb.exec("exit 137")).oom_killed
        exact = await precise.get("tnt_01m8000000000000000000000a", "ses_01m8000000000000000000000c")
        assert "oom_detection" in exact.capabilities
        assert not (await exact.exec("exit 137")).oom_killed  # it knows a memory kill when it sees one
    finally:
        await blind.aclose()
        await precise.aclose()
