"""Sandbox upkeep on the E2B and Daytona fakes: the scheduled keepalive, the idle reaper, remote OOM kills and
Daytona's resources."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.telemetry import MemoryTelemetry
from openma.core.orchestrator import SandboxOrchestrator
from openma.core.upkeep import SandboxUpkeep
from openma.errors import ConfigError, InvalidInput, SandboxError
from openma.platform import Platform
from openma.ports.sandbox import SandboxSpec
from openma.settings import Settings

pytestmark = pytest.mark.anyio

T1 = "tnt_01m8000000000000000000000a"
WAIT = 30.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # both SDKs are asyncio-only


@pytest.fixture(params=["e2b", "daytona"])
def which(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake(which: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{which}_fake").fake


@pytest.fixture
def provider(which: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{which}_provider")


@pytest.fixture
def blobs(sandbox_blobs: FsspecBlobStore) -> FsspecBlobStore:
    """The store the provider writes snapshots to: the orchestrator verifies them there."""
    return sandbox_blobs


@pytest.fixture
def telemetry() -> MemoryTelemetry:
    return MemoryTelemetry()


def session_id() -> str:
    return "ses_01m8" + uuid.uuid4().hex[:22]


def keepalive_path(which: str, sandbox_id: str) -> str:
    return f"/sandboxes/{sandbox_id}/timeout" if which == "e2b" else f"/api/sandbox/{sandbox_id}/last-activity"


def keepalives(which: str, fake: Any, sandbox_id: str) -> int:
    path = keepalive_path(which, sandbox_id)
    return sum(1 for method, p in list(fake.calls) if method == "POST" and p == path)


async def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait (bounded) until ``condition()`` holds: the fakes run in a thread, so their records are polled."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - the fakes' records live in another thread
            await anyio.sleep(0.01)


def lifecycle(telemetry: MemoryTelemetry, session: str) -> list[tuple[str, str | None]]:
    return [(f["action"], f.get("why")) for f in telemetry.of("sandbox.lifecycle") if f["session_id"] == session]


async def test_live_sandboxes_are_kept_alive_until_the_orchestrator_closes(
    which: str,
    fake: Any,
    provider: Any,
    blobs: FsspecBlobStore,
    telemetry: MemoryTelemetry,
    remote_spec: Callable[..., SandboxSpec],
) -> None:
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            orch = SandboxOrchestrator(provider, blobs, telemetry)
            await orch.start_upkeep(tg, interval=0.05)
            with pytest.raises(SandboxError):
                await orch.start_upkeep(tg, interval=0.05)
            sid = session_id()
            sb = await orch.get(T1, sid, remote_spec(tenant_id=T1, session_id=sid, lifetime=900))
            await wait_for(lambda: keepalives(which, fake, sb.id) >= 2)
            if which == "e2b":  # each keepalive asks for the spec's whole lifetime again
                end = fake.sandboxes[sb.id].end_at
                assert end >= datetime.now(UTC) + timedelta(seconds=800)
            assert orch.upkeep is not None
            await orch.aclose()
        # The task group ended by itself: aclose stopped the loop.
        assert orch.sessions() == {}


async def test_an_idle_sandbox_is_reaped_and_a_busy_one_is_not(
    which: str,
    fake: Any,
    provider: Any,
    blobs: FsspecBlobStore,
    telemetry: MemoryTelemetry,
    remote_spec: Callable[..., SandboxSpec],
) -> None:
    idle_id, busy_id = session_id(), session_id()
    async with anyio.create_task_group() as tg:
        orch = SandboxOrchestrator(provider, blobs, telemetry)
        try:
            idle = await orch.get(T1, idle_id, remote_spec(tenant_id=T1, session_id=idle_id))
            busy = await orch.get(T1, busy_id, remote_spec(tenant_id=T1, session_id=busy_id))
            await idle.write_file("notes.txt", b"kept across the reap")
            first_idle, first_busy = idle.id, busy.id
            await orch.start_upkeep(tg, interval=0.05, idle_reap_after=0.3)
            # The busy one runs a command far longer than the idle time.
            result = await busy.exec("sleep 2; echo done", timeout=60)
            assert (result.exit_code, result.stdout) == (0, "done\n")
            await wait_for(lambda: orch.sessions()[idle_id] is None)
            assert ("destroyed", "reaped") not in lifecycle(telemetry, busy_id)
            assert busy.id == first_busy
            assert keepalives(which, fake, first_busy) >= 1  # kept alive while it ran
            steps = lifecycle(telemetry, idle_id)
            assert steps[-2:] == [("snapshot", "reaped"), ("destroyed", "reaped")]
            gone = fake.sandboxes.get(first_idle)
            assert gone is None or not gone.alive  # the provider's sandbox is gone
            # The session warms a new sandbox with the snapshot the reaper took.
            assert await idle.read_file("notes.txt") == b"kept across the reap"
            assert idle.id != first_idle
        finally:
            await orch.aclose()


async def test_a_failing_keepalive_is_reported_and_the_loop_goes_on(
    which: str,
    fake: Any,
    provider: Any,
    blobs: FsspecBlobStore,
    telemetry: MemoryTelemetry,
    remote_spec: Callable[..., SandboxSpec],
) -> None:
    sid = session_id()
    async with anyio.create_task_group() as tg:
        orch = SandboxOrchestrator(provider, blobs, telemetry)
        try:
            sb = await orch.get(T1, sid, remote_spec(tenant_id=T1, session_id=sid))
            fake.fail("POST", keepalive_path(which, sb.id), 500, times=1)
            await orch.start_upkeep(tg, interval=0.05)
            await wait_for(lambda: any(f["where"] == "upkeep.keepalive" for f in telemetry.of("silent_catch")))
            [caught] = [f for f in telemetry.of("silent_catch") if f["where"] == "upkeep.keepalive"]
            assert caught["session_id"] == sid and caught["code"]
            seen = keepalives(which, fake, sb.id)
            await wait_for(lambda: keepalives(which, fake, sb.id) >= seen + 2)  # later passes still run
            assert len([f for f in telemetry.of("silent_catch") if f["where"] == "upkeep.keepalive"]) == 1
        finally:
            await orch.aclose()


async def test_a_remote_oom_kill_recycles_like_a_local_one(
    provider: Any,
    blobs: FsspecBlobStore,
    telemetry: MemoryTelemetry,
    remote_spec: Callable[..., SandboxSpec],
    tmp_path: Path,
) -> None:
    # The sandbox's kernel counts OOM kills; the command stands in for the kernel: it bumps the count and
    # dies of SIGKILL, as a process the OOM killer picked does.
    counter = tmp_path / f"memory.events-{uuid.uuid4().hex[:6]}"
    counter.write_text("low 0\noom 0\noom_kill 0\n")
    sid = session_id()
    spec = remote_spec(tenant_id=T1, session_id=sid, options={"oom_counters": [str(counter)]})
    orch = SandboxOrchestrator(provider, blobs, telemetry)
    try:
        sb = await orch.get(T1, sid, spec)
        before = sb.id
        await sb.write_file("work.txt", b"written before the OOM")
        plain = await sb.exec("kill -KILL $$")
        assert plain.exit_code == 137 and not plain.oom_killed  # no memory kill was counted
        killed = await sb.exec(f"printf 'oom_kill 1\\n' > {counter}; kill -KILL $$", tool="bash")
        assert killed.exit_code == 137 and killed.oom_killed and not killed.timed_out
        assert orch.sessions()[sid] is None
        assert [a for a, _ in lifecycle(telemetry, sid)][-3:] == ["oom", "snapshot", "destroyed"]
        assert telemetry.of("tool.call")[-1]["outcome"] == "oom"
        assert await sb.read_file("work.txt") == b"written before the OOM"
        assert sb.id != before
    finally:
        await orch.aclose()


async def test_oom_counters_option_is_checked(provider: Any, remote_spec: Callable[..., SandboxSpec]) -> None:
    for bad in ("/proc/vmstat", ["relative/path"], [3]):
        with pytest.raises(InvalidInput):
            await provider.create(remote_spec(options={"oom_counters": bad}))


# -- through the platform ------------------------------------------------------------------------------------


def platform_settings(e2b_fake: Any, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "sandbox": "e2b",
        "sqlite_path": str(tmp_path / "openma.db"),
        "blob_url": f"memory://upkeep-platform-{uuid.uuid4().hex}",
        "sandbox_keepalive_interval": 0.05,
        **overrides,
    }
    return e2b_fake.settings(**values)


async def test_the_platform_runs_the_loop_while_it_is_open(
    e2b_fake: Any, tmp_path: Path, remote_spec: Callable[..., SandboxSpec]
) -> None:
    with anyio.fail_after(WAIT):
        async with Platform.open(platform_settings(e2b_fake, tmp_path)) as oma:
            orch = await oma.sandbox_orchestrator()
            assert isinstance(orch.upkeep, SandboxUpkeep) and orch.upkeep.interval == 0.05
            sid = session_id()
            sb = await orch.get(T1, sid, remote_spec(tenant_id=T1, session_id=sid))
            await wait_for(lambda: keepalives("e2b", e2b_fake.fake, sb.id) >= 1)
        assert orch.upkeep._done.is_set()


async def test_upkeep_can_be_turned_off_and_errors_still_come_out_plain(e2b_fake: Any, tmp_path: Path) -> None:
    settings = platform_settings(e2b_fake, tmp_path, sandbox_keepalive_interval=0)
    with pytest.raises(KeyError):  # the platform's task group never wraps the block's own error
        async with Platform.open(settings) as oma:
            assert (await oma.sandbox_orchestrator()).upkeep is None
            raise KeyError("the block's own")


@pytest.mark.parametrize(
    "field", ["sandbox_keepalive_interval", "sandbox_idle_reap_after", "daytona_cpu", "daytona_memory", "daytona_disk"]
)
@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), True, "5"])
def test_settings_refuse_bad_knobs(field: str, value: Any) -> None:
    with pytest.raises(ConfigError):
        Settings(**{field: value})


def test_settings_read_the_knobs_from_the_environment() -> None:
    env = {
        "OPENMA_SANDBOX_KEEPALIVE_INTERVAL": "120",
        "OPENMA_SANDBOX_IDLE_REAP_AFTER": "0",
        "DAYTONA_CPU": "2",
        "DAYTONA_MEMORY": "4",
        "DAYTONA_DISK": "10",
    }
    s = Settings.from_env(env)
    assert (s.sandbox_keepalive_interval, s.sandbox_idle_reap_after) == (120.0, 0.0)
    assert (s.daytona_cpu, s.daytona_memory, s.daytona_disk) == (2, 4, 10)
    with pytest.raises(ConfigError):
        Settings.from_env({"DAYTONA_CPU": "two"})
    with pytest.raises(ConfigError):
        Settings(daytona_cpu=0)


# -- Daytona resources ---------------------------------------------------------------------------------------


async def test_daytona_resources_reach_the_create_call(
    daytona_fake: Any, blobs: FsspecBlobStore, remote_spec: Callable[..., SandboxSpec]
) -> None:
    from openma.adapters.sandboxes.daytona import open_sandbox_provider

    settings = daytona_fake.settings(daytona_image="python:3.12-slim", daytona_cpu=2, daytona_memory=4, daytona_disk=10)
    provider = await open_sandbox_provider(settings, blobs=blobs)
    try:
        sandbox = await provider.create(remote_spec())
        await sandbox.destroy()
        body = daytona_fake.fake.created[-1]
        assert (body.get("cpu"), body.get("memory"), body.get("disk")) == (2, 4, 10)
        # The environment's own resources win over the settings, field by field.
        sandbox = await provider.create(remote_spec(options={"resources": {"cpu": 1, "disk": 20}}))
        await sandbox.destroy()
        body = daytona_fake.fake.created[-1]
        assert (body.get("cpu"), body.get("memory"), body.get("disk")) == (1, 4, 20)
        for bad in ({"cpu": 0}, {"cpu": "2"}, {"gpu": 1}, [2]):
            with pytest.raises(InvalidInput):
                await provider.create(remote_spec(options={"resources": bad}))
    finally:
        await provider.aclose()


async def test_daytona_resources_need_an_image(daytona_provider: Any, remote_spec: Callable[..., SandboxSpec]) -> None:
    with pytest.raises(ConfigError, match="image"):
        await daytona_provider.create(remote_spec(options={"resources": {"memory": 4}}))
