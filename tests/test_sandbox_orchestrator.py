"""The sandbox orchestrator over real local sandboxes and a real (memory://) blob store."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.sandboxes.local import LocalLimits, LocalSandboxConfig, LocalSandboxProvider
from openma.adapters.telemetry import MemoryTelemetry
from openma.core.orchestrator import BlobSnapshotIndex, MemorySnapshotIndex, SandboxOrchestrator
from openma.errors import NotFound, SandboxError, SandboxRestoreFailed
from openma.ports.sandbox import SandboxSpec

pytestmark = pytest.mark.anyio

T1 = "tnt_01m8000000000000000000000a"
T2 = "tnt_01m8000000000000000000000b"
S1 = "ses_01m8000000000000000000000c"
S2 = "ses_01m8000000000000000000000d"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def blobs() -> AsyncIterator[FsspecBlobStore]:
    store = await FsspecBlobStore.open(f"memory://orchestrator-{uuid.uuid4().hex}")
    yield store
    await store.aclose()


def provider(tmp_path: Path, blobs: Any, **config: Any) -> LocalSandboxProvider:
    config.setdefault("kill_grace", 0.5)
    return LocalSandboxProvider(LocalSandboxConfig(root=str(tmp_path / "sandboxes"), **config), blobs=blobs)


@pytest.fixture
def telemetry() -> MemoryTelemetry:
    return MemoryTelemetry()


@pytest.fixture
async def orch(
    tmp_path: Path, blobs: FsspecBlobStore, telemetry: MemoryTelemetry
) -> AsyncIterator[SandboxOrchestrator]:
    o = SandboxOrchestrator(provider(tmp_path, blobs), blobs, telemetry)
    yield o
    await o.aclose()


def actions(telemetry: MemoryTelemetry) -> list[str]:
    return [f["action"] for f in telemetry.of("sandbox.lifecycle")]


async def test_one_sandbox_per_session(orch: SandboxOrchestrator) -> None:
    a = await orch.get(T1, S1)
    again = await orch.get(T1, S1)
    b = await orch.get(T1, S2)
    assert a.id == again.id
    assert a.id != b.id
    await a.write_file("f.txt", b"a")
    assert await again.read_file("f.txt") == b"a"
    assert not await b.exists("f.txt")
    with pytest.raises(NotFound):
        await orch.get(T2, S1)
    assert orch.sessions() == {S1: a.id, S2: b.id}


async def test_concurrent_gets_warm_once(orch: SandboxOrchestrator, telemetry: MemoryTelemetry) -> None:
    got: list[str] = []

    async def one() -> None:
        got.append((await orch.get(T1, S1)).id)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
    assert len(set(got)) == 1
    assert actions(telemetry).count("created") == 1


async def test_release_snapshots_and_the_next_warm_up_restores(
    orch: SandboxOrchestrator, blobs: FsspecBlobStore, telemetry: MemoryTelemetry
) -> None:
    sb = await orch.get(T1, S1)
    first_id = sb.id
    await sb.write_file("work/notes.txt", b"remember me")
    ref = await orch.release(S1)
    assert ref is not None
    assert await orch.release(S1) is None  # idempotent
    with pytest.raises(SandboxError):
        await sb.exec("true")
    assert (await BlobSnapshotIndex(blobs).latest(T1, S1)) == ref

    warm = await orch.get(T1, S1)
    assert warm.id != first_id
    assert await warm.read_file("work/notes.txt") == b"remember me"
    assert actions(telemetry) == ["created", "snapshot", "destroyed", "created", "restored"]


async def test_warm_up_restores_across_orchestrators(tmp_path: Path, blobs: FsspecBlobStore) -> None:
    first = SandboxOrchestrator(provider(tmp_path / "one", blobs), blobs)
    sb = await first.get(T1, S1)
    await sb.write_file("kept.bin", bytes(range(256)))
    await first.aclose()
    second = SandboxOrchestrator(provider(tmp_path / "two", blobs), blobs)
    assert await (await second.get(T1, S1)).read_file("kept.bin") == bytes(range(256))
    await second.aclose()


async def test_newer_snapshots_replace_older_ones(orch: SandboxOrchestrator, blobs: FsspecBlobStore) -> None:
    sb = await orch.get(T1, S1)
    await sb.write_file("v.txt", b"1")
    old = await orch.idle(S1)
    await sb.write_file("v.txt", b"2")
    new = await sb.snapshot()
    assert old is not None
    assert new.key != old.key
    with pytest.raises(NotFound):
        await blobs.head(old.key)
    await blobs.head(new.key)
    await sb.write_file("v.txt", b"3")
    await orch.release(S1)
    assert await (await orch.get(T1, S1)).read_file("v.txt") == b"3"


async def test_idle_snapshot_can_be_turned_off(tmp_path: Path, blobs: FsspecBlobStore) -> None:
    o = SandboxOrchestrator(provider(tmp_path, blobs), blobs, idle_snapshot=False, index=MemorySnapshotIndex())
    await (await o.get(T1, S1)).write_file("x", b"x")
    assert await o.idle(S1) is None
    assert await o.idle("ses_unknown") is None
    await o.aclose()


async def test_a_missing_snapshot_is_a_typed_error_never_an_empty_workspace(
    orch: SandboxOrchestrator, blobs: FsspecBlobStore, telemetry: MemoryTelemetry
) -> None:
    sb = await orch.get(T1, S1)
    await sb.write_file("f", b"x")
    ref = await orch.release(S1)
    assert ref is not None
    await blobs.delete(ref.key)
    with pytest.raises(SandboxRestoreFailed) as caught:
        await orch.get(T1, S1)
    assert caught.value.code == "sandbox_restore_failed"
    assert caught.value.details["cause"] == "not_found"
    assert "restore_failed" in actions(telemetry)
    # The sandbox that could not be restored was destroyed: nothing can snapshot it over the record.
    assert orch.sessions()[S1] is None
    assert actions(telemetry)[-1] == "destroyed"
    assert await orch.index.latest(T1, S1) == ref


async def test_oom_snapshots_stops_and_the_next_call_restores(
    tmp_path: Path, blobs: FsspecBlobStore, telemetry: MemoryTelemetry
) -> None:
    o = SandboxOrchestrator(provider(tmp_path, blobs, limits=LocalLimits(memory_bytes=96 << 20)), blobs, telemetry)
    sb = await o.get(T1, S1)
    before = sb.id
    await sb.write_file("work.txt", b"written before the OOM")
    grow = f"{sys.executable} -c \"import time\nb=[]\nwhile True:\n b.append(b'x'*(1<<20))\n time.sleep(0.01)\""
    result = await sb.exec(grow, timeout=60, tool="bash")
    assert result.oom_killed
    assert result.exit_code == 137
    assert o.sessions()[S1] is None
    assert actions(telemetry)[-3:] == ["oom", "snapshot", "destroyed"]
    # The same handle goes on working, in a new sandbox with the workspace restored.
    assert (await sb.exec("cat work.txt")).stdout == "written before the OOM"
    assert sb.id != before
    calls = telemetry.of("tool.call")
    assert calls[0]["tool"] == "bash"
    assert calls[0]["outcome"] == "oom"
    await o.aclose()


async def test_reaper_recycles_idle_sandboxes(orch: SandboxOrchestrator, telemetry: MemoryTelemetry) -> None:
    idle = await orch.get(T1, S1)
    busy = await orch.get(T1, S2)
    await idle.write_file("state.txt", b"idle state")
    idle_id = idle.id
    await anyio.sleep(0.3)
    await busy.exec("true")
    assert await orch.reap(0.2) == [S1]
    assert orch.sessions()[S1] is None
    assert orch.sessions()[S2] == busy.id
    assert await idle.read_file("state.txt") == b"idle state"
    assert idle.id != idle_id
    assert await orch.reap(60) == []


async def test_exec_telemetry(orch: SandboxOrchestrator, telemetry: MemoryTelemetry) -> None:
    sb = await orch.get(T1, S1)
    sb.set_secrets({"TOKEN": "tok-secret-value"})
    await sb.exec("echo hi")
    await sb.exec("echo tok-secret-value; exit 3", tool="bash")
    await sb.exec("sleep 5", timeout=0.3)
    events = telemetry.of("sandbox.exec")
    assert [e["outcome"] for e in events] == ["ok", "error", "timeout"]
    assert events[1]["exit_code"] == 3
    assert "tok-secret-value" not in str(telemetry.records)
    assert events[1]["command"] == "echo ***; exit 3"
    assert all(e["session_id"] == S1 and e["tenant_id"] == T1 and e["duration_ms"] >= 0 for e in events)
    (call,) = telemetry.of("tool.call")
    assert (call["tool"], call["outcome"]) == ("bash", "error")
    # Secrets follow the session into the sandbox that replaces this one.
    await orch.reap(0)
    masked = await sb.exec('echo "$TOKEN"', secrets=["TOKEN"])
    assert masked.stdout == "***\n"


async def test_spec_is_used_and_background_works(orch: SandboxOrchestrator) -> None:
    sb = await orch.get(T1, S1, SandboxSpec(tenant_id=T1, session_id=S1, env={"FROM_SPEC": "yes"}))
    assert (await sb.exec("echo $FROM_SPEC")).stdout == "yes\n"
    info = await sb.start("echo bg")
    while (await sb.process(info.id)).status == "running":  # noqa: ASYNC110
        await anyio.sleep(0.02)
    assert (await sb.logs(info.id))[0] == "bg\n"
    await sb.keepalive(30)
    assert "background" in sb.capabilities
    await sb.destroy()
    await sb.destroy()
    with pytest.raises(SandboxError):
        await sb.read_file("x")
    with pytest.raises(SandboxError):
        sb.set_secrets({"A": "b"})
