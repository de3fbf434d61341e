"""Fault paths of the sandbox orchestrator and of an actor's sandbox, on both engines and both event loops.

* a stale holder's sandbox is fenced: exec, files and snapshots through it are ``LeaseLost``, and the latest
  snapshot recorded on the session row stays the new holder's (the record is written with the epoch check);
* a failed restore at warm-up is retried, then a typed ``SandboxRestoreFailed``: never an empty workspace
  whose next snapshot would replace the good one; a snapshot is verified before it is recorded;
* a sandbox that died at the provider (its directory removed, the E2B / Daytona fake says it is gone) is
  replaced on the next call, the workspace restored, and telemetry says so; a restarted host reattaches to
  the recorded sandbox when it is alive and creates a new one when it is gone;
* exit 137 from an adapter without ``oom_detection`` is an out-of-memory kill, as on the local sandbox.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from openma import LeaseLost, Platform, SandboxRestoreFailed, Settings
from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.locks.flock import FlockLeaseLock
from openma.adapters.sandboxes.local import LocalSandboxConfig, LocalSandboxProvider
from openma.adapters.telemetry import MemoryTelemetry
from openma.core import keys
from openma.core.actor import SessionActor, acquire_actor
from openma.core.orchestrator import MemorySnapshotIndex, SandboxOrchestrator
from openma.errors import NotFound, StorageUnavailable
from openma.ports.blobs import BlobInfo
from openma.ports.sessions import SessionStore
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio

T1 = "tnt_01m8000000000000000000000a"
S1 = "ses_01m8000000000000000000000c"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def actions(telemetry: MemoryTelemetry) -> list[str]:
    return [f["action"] for f in telemetry.of("sandbox.lifecycle")]


class FlakyBlobs:
    """A blob store whose ``get`` fails ``fail_gets`` more times (``StorageUnavailable``), and whose ``head``
    can be made to lie about a blob's size (a snapshot that was not stored whole)."""

    def __init__(self, inner: FsspecBlobStore) -> None:
        self.inner = inner
        self.fail_gets = 0
        self.short_heads = 0
        self.gets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, key: str) -> bytes:
        self.gets += 1
        if self.fail_gets > 0:
            self.fail_gets -= 1
            raise StorageUnavailable("injected: the blob store did not answer")
        return await self.inner.get(key)

    async def head(self, key: str) -> BlobInfo:
        info = await self.inner.head(key)
        if self.short_heads > 0:
            self.short_heads -= 1
            return BlobInfo(
                key=info.key,
                size=info.size - 1,
                content_type=info.content_type,
                etag=info.etag,
                created_at=info.created_at,
                expires_at=info.expires_at,
                metadata=info.metadata,
            )
        return info


@pytest.fixture
async def blobs() -> AsyncIterator[FlakyBlobs]:
    store = await FsspecBlobStore.open(f"memory://orchestrator-faults-{uuid.uuid4().hex}")
    yield FlakyBlobs(store)
    await store.aclose()


def local_provider(root: Path, blobs: Any) -> LocalSandboxProvider:
    return LocalSandboxProvider(LocalSandboxConfig(root=str(root), kill_grace=0.5), blobs=blobs)


def orchestrator(root: Path, blobs: Any, telemetry: MemoryTelemetry | None = None, **kw: Any) -> SandboxOrchestrator:
    kw.setdefault("restore_backoff", 0.01)
    return SandboxOrchestrator(local_provider(root, blobs), blobs, telemetry, **kw)  # type: ignore[arg-type]


# -- item 3: a failed restore is retried, then a typed error; snapshots are verified before they count ------


async def test_a_transient_blob_error_at_warm_up_is_retried(tmp_path: Path, blobs: FlakyBlobs) -> None:
    telemetry = MemoryTelemetry()
    orch = orchestrator(tmp_path / "sbx", blobs, telemetry, index=MemorySnapshotIndex())
    try:
        await (await orch.get(T1, S1)).write_file("work.txt", b"precious")
        good = await orch.release(S1)
        assert good is not None
        blobs.fail_gets = 2
        warm = await orch.get(T1, S1)
        assert await warm.read_file("work.txt") == b"precious"
        restores = [f for f in telemetry.of("sandbox.lifecycle") if f["action"] in ("restore_failed", "restored")]
        assert [(f["action"], f["attempt"]) for f in restores] == [
            ("restore_failed", 1),
            ("restore_failed", 2),
            ("restored", 3),
        ]
        assert [f["where"] for f in telemetry.of("silent_catch")] == ["orchestrator.restore"] * 2
    finally:
        await orch.aclose()


async def test_a_permanent_blob_error_is_a_typed_error_and_the_good_snapshot_survives(
    tmp_path: Path, blobs: FlakyBlobs
) -> None:
    telemetry = MemoryTelemetry()
    index = MemorySnapshotIndex()
    orch = orchestrator(tmp_path / "sbx", blobs, telemetry, index=index)
    try:
        await (await orch.get(T1, S1)).write_file("work.txt", b"precious")
        good = await orch.release(S1)
        assert good is not None
        blobs.fail_gets = 1000
        for _ in range(2):  # every warm-up fails the same way; nothing empty is ever handed out
            with pytest.raises(SandboxRestoreFailed) as caught:
                await orch.get(T1, S1)
            assert caught.value.code == "sandbox_restore_failed"
            assert caught.value.details["cause"] == "storage_unavailable"
            assert caught.value.details["attempts"] == 3
            assert orch.sessions()[S1] is None
        # Releasing and reaping now has no sandbox to snapshot over the good one.
        assert await orch.idle(S1) is None
        await orch.reap(0)
        assert await index.latest(T1, S1) == good
        await blobs.inner.head(good.key)
        # The store is back: the same session warms with its workspace.
        blobs.fail_gets = 0
        assert await (await orch.get(T1, S1)).read_file("work.txt") == b"precious"
    finally:
        await orch.aclose()


async def test_a_snapshot_that_fails_its_check_never_replaces_the_previous_one(
    tmp_path: Path, blobs: FlakyBlobs
) -> None:
    telemetry = MemoryTelemetry()
    index = MemorySnapshotIndex()
    orch = orchestrator(tmp_path / "sbx", blobs, telemetry, index=index)
    try:
        sb = await orch.get(T1, S1)
        await sb.write_file("v.txt", b"1")
        good = await orch.idle(S1)
        assert good is not None
        await sb.write_file("v.txt", b"2")
        blobs.short_heads = 1
        assert await orch.idle(S1) is None
        assert actions(telemetry)[-1] == "snapshot_failed"
        assert await index.latest(T1, S1) == good
        await blobs.inner.head(good.key)  # the previous blob was not deleted
        listed = await blobs.inner.list(keys.snapshot_root_prefix(T1, S1))
        assert [b.key for b in listed] == [good.key]  # and the unverified one is gone
        # Through the handle the failure is raised, with the same guarantees.
        blobs.short_heads = 1
        with pytest.raises(Exception, match="not stored whole"):
            await sb.snapshot()
        assert await index.latest(T1, S1) == good
    finally:
        await orch.aclose()


async def test_an_expired_snapshot_starts_the_session_empty(tmp_path: Path, blobs: FlakyBlobs) -> None:
    telemetry = MemoryTelemetry()
    index = MemorySnapshotIndex()
    orch = orchestrator(tmp_path / "sbx", blobs, telemetry, index=index)
    try:
        await (await orch.get(T1, S1)).write_file("old.txt", b"x")
        ref = await orch.release(S1)
        assert ref is not None
        # Its TTL ran out and the blob store swept it: expected, not a failure.
        index.refs[(T1, S1)] = attrs.evolve(ref, expires_at=ref.created_at)
        await blobs.inner.delete(ref.key)
        warm = await orch.get(T1, S1)
        assert not await warm.exists("old.txt")
        assert actions(telemetry)[-2:] == ["created", "snapshot_expired"]
    finally:
        await orch.aclose()


# -- item 4: a sandbox that died at the provider is replaced; a restarted host reattaches --------------------


async def test_a_local_sandbox_removed_from_outside_is_replaced_and_restored(tmp_path: Path, blobs: FlakyBlobs) -> None:
    telemetry = MemoryTelemetry()
    orch = orchestrator(tmp_path / "sbx", blobs, telemetry, index=MemorySnapshotIndex())
    try:
        sb = await orch.get(T1, S1)
        await sb.write_file("work.txt", b"saved")
        await orch.idle(S1)
        dead = sb.id
        shutil.rmtree(tmp_path / "sbx" / dead)
        result = await sb.exec("cat work.txt", tool="bash")
        assert result.stdout == "saved"
        assert sb.id != dead
        gone = next(f for f in telemetry.of("sandbox.lifecycle") if f["action"] == "gone")
        assert (gone["sandbox_id"], gone["op"], gone["error"]) == (dead, "exec", "sandbox_gone")
        replaced = next(f for f in telemetry.of("sandbox.lifecycle") if f["action"] == "replaced")
        assert (replaced["replaced"], replaced["sandbox_id"]) == (dead, sb.id)
        assert actions(telemetry)[-4:] == ["gone", "created", "restored", "replaced"]
        # Files and the next calls go to the replacement too.
        await sb.write_file("more.txt", b"m")
        assert await sb.read_file("more.txt") == b"m"
    finally:
        await orch.aclose()


async def test_a_restarted_host_reattaches_to_a_live_sandbox_and_replaces_a_gone_one(
    tmp_path: Path, blobs: FlakyBlobs
) -> None:
    index = MemorySnapshotIndex()
    first = orchestrator(tmp_path / "sbx", blobs, index=index)
    sb = await first.get(T1, S1)
    await sb.write_file("snap.txt", b"in the snapshot")
    await first.idle(S1)
    await sb.write_file("live.txt", b"only in the live sandbox")
    kept = sb.id
    await first.provider.aclose()  # the host dies: its sandboxes live on at the provider (here: on disk)

    telemetry = MemoryTelemetry()
    second = orchestrator(tmp_path / "sbx", blobs, telemetry, index=index)
    again = await second.get(T1, S1)
    assert again.id == kept
    assert await again.read_file("live.txt") == b"only in the live sandbox"
    assert actions(telemetry) == ["reattached"]
    await second.provider.aclose()  # and dies too; now the sandbox goes away while nobody runs
    shutil.rmtree(tmp_path / "sbx" / kept)

    telemetry = MemoryTelemetry()
    third = orchestrator(tmp_path / "sbx", blobs, telemetry, index=index)
    try:
        fresh = await third.get(T1, S1)
        assert fresh.id != kept
        assert await fresh.read_file("snap.txt") == b"in the snapshot"
        assert actions(telemetry) == ["reattach_failed", "created", "restored"]
        assert await index.sandbox_id(T1, S1) == fresh.id
    finally:
        await third.aclose()
    assert await index.sandbox_id(T1, S1) is None  # released: a later host does not look for it


# -- items 1 and 2 through actors, on both engines -------------------------------------------------------------


@pytest.fixture
def settings(engine: str, engine_url: str, tmp_path: Path) -> Settings:
    values: dict[str, Any] = {
        "blob_url": f"file://{tmp_path}/blobs",
        "local_sandbox_root": str(tmp_path / "sandboxes"),
        "sqlite_path": str(tmp_path / "openma.db"),
    }
    if engine == "postgres":
        values.update(
            postgres_url=engine_url, store_backends={"default": "cf", "sessions": "pg"}, root_secret=ROOT_SECRET
        )
    return Settings(**values)


async def _session(oma: Platform) -> tuple[Any, str]:
    tenant = await oma.tenants.create(name="faults")
    t = oma.tenant(tenant.id)
    agent = await t.agents.create(name="a", model="m")
    env = await t.environments.create(name="e")
    session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
    return t, session.id


async def test_the_sandbox_record_is_fenced(settings: Settings) -> None:
    async with Platform.open(settings) as oma:
        t, sid = await _session(oma)
        store: SessionStore = t.sessions.store
        grant = await store.take_lease(sid, "a")
        before = await store.record_sandbox(sid, sandbox_id="sbx_one", snapshot={"key": "k1"}, fence=grant.epoch)
        assert (before.sandbox_id, before.snapshot) == (None, None)
        newer = await store.take_lease(sid, "b")
        with pytest.raises(LeaseLost):
            await store.record_sandbox(sid, snapshot={"key": "stale"}, fence=grant.epoch)
        record = await store.sandbox_record(sid)
        assert (record.lease_epoch, record.sandbox_id, record.snapshot) == (newer.epoch, "sbx_one", {"key": "k1"})
        previous = await store.record_sandbox(sid, sandbox_id=None, fence=newer.epoch)
        assert previous.sandbox_id == "sbx_one"
        assert (await store.sandbox_record(sid)).sandbox_id is None
        with pytest.raises(NotFound):
            await store.sandbox_record("ses_01m8000000000000000000000z")


def _actor_with_other_lock(t: Any, sid: str, locks: Path, sandboxes: Callable[[], Any]) -> Any:
    """A second holder of the session through another lock domain: what a holder that lost its lock unseen
    (a partition, a frozen process) faces, here without waiting for one."""
    telemetry = MemoryTelemetry()
    return acquire_actor(t.sessions.store, FlockLeaseLock(locks), sid, telemetry=telemetry, sandboxes=sandboxes)


async def test_a_stale_actors_sandbox_is_fenced(settings: Settings, tmp_path: Path) -> None:
    telemetry = MemoryTelemetry()
    async with Platform.open(settings, telemetry=telemetry) as oma:
        t, sid = await _session(oma)
        async with t.sessions.actor(sid) as stale:
            old = await stale.sandbox()
            await old.write_file("f.txt", b"old holder")
            await old.snapshot()
            # Another host's orchestrator serves the new holder (the same store, another provider root).
            other = SandboxOrchestrator(
                local_provider(tmp_path / "other-host", oma.blobs), oma.blobs, restore_backoff=0.01
            )

            async def other_host() -> SandboxOrchestrator:
                return other

            async with _actor_with_other_lock(t, sid, tmp_path / "other-locks", other_host) as new:
                sb = await new.sandbox()
                assert await sb.read_file("f.txt") == b"old holder"  # restored from the old holder's snapshot
                await sb.write_file("f.txt", b"new holder")
                mine = await sb.snapshot()

                for attempt in (
                    old.exec("echo hi"),
                    old.write_file("f.txt", b"stale write"),
                    old.read_file("f.txt"),
                    old.list_files("."),
                    old.snapshot(),
                    old.destroy(),
                ):
                    with pytest.raises(LeaseLost):
                        await attempt
                assert not stale.held
                # The old host's reaper snapshots and recycles what it kept: the record refuses it.
                orch = await oma.sandbox_orchestrator()
                await orch.reap(0)
                record = await t.sessions.store.sandbox_record(sid)
                assert record.snapshot is not None and record.snapshot["key"] == mine.key
                assert record.sandbox_id == sb.id
                assert await sb.read_file("f.txt") == b"new holder"
            await other.aclose()
        where = [f["where"] for f in telemetry.of("silent_catch")]
        assert "orchestrator.snapshot.reaped" in where


async def test_a_stale_actor_in_the_same_process_is_fenced_on_the_shared_sandbox(
    settings: Settings, tmp_path: Path
) -> None:
    async with Platform.open(settings) as oma:
        t, sid = await _session(oma)
        async with t.sessions.actor(sid) as stale:
            old = await stale.sandbox()
            await old.write_file("f.txt", b"1")
            async with _actor_with_other_lock(t, sid, tmp_path / "other-locks", oma.sandbox_orchestrator) as new:
                sb = await new.sandbox()
                assert sb.id == old.id  # one orchestrator, one sandbox for the session: now the new holder's
                await sb.write_file("f.txt", b"2")
                ref = await sb.snapshot()
                with pytest.raises(LeaseLost):
                    await old.exec("true")
                with pytest.raises(LeaseLost):
                    await old.snapshot()
                assert (await t.sessions.store.sandbox_record(sid)).snapshot["key"] == ref.key
            # The new holder released; its idle snapshot is the latest, and the old holder stays refused.
            with pytest.raises(LeaseLost):
                await old.read_file("f.txt")
        assert (await t.sessions.store.sandbox_record(sid)).snapshot["key"] != ref.key


async def test_a_cancelled_actor_frees_its_lease(settings: Settings) -> None:
    async with Platform.open(settings) as oma:
        t, sid = await _session(oma)
        with anyio.CancelScope() as scope:
            async with t.sessions.actor(sid) as actor:
                await (await actor.sandbox()).write_file("f.txt", b"x")
                scope.cancel()
                await anyio.sleep_forever()
        async with t.sessions.actor(sid, wait=0) as again:
            assert again.recovery is not None  # it did not exit cleanly, and the next holder knows
            assert await (await again.sandbox()).read_file("f.txt") == b"x"


async def test_an_actor_cancelled_during_its_idle_snapshot_frees_its_lease(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Platform.open(settings) as oma:
        t, sid = await _session(oma)
        orch = await oma.sandbox_orchestrator()
        entered = anyio.Event()
        real_idle = orch.idle

        async def stuck_idle(session_id: str) -> Any:
            entered.set()
            await anyio.sleep_forever()

        monkeypatch.setattr(orch, "idle", stuck_idle)
        async with anyio.create_task_group() as tg:

            async def turn() -> None:
                async with t.sessions.actor(sid) as actor:
                    await (await actor.sandbox()).write_file("f.txt", b"x")

            tg.start_soon(turn)
            await entered.wait()
            tg.cancel_scope.cancel()
        monkeypatch.setattr(orch, "idle", real_idle)
        async with t.sessions.actor(sid, wait=0):
            pass


@pytest.mark.parametrize("where", ["idle_snapshot", "recovery", "turn", "drop_lease"])
async def test_errors_on_the_way_out_still_free_the_lease(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    async with Platform.open(settings) as oma:
        t, sid = await _session(oma)
        store = t.sessions.store
        orch = await oma.sandbox_orchestrator()
        boom = StorageUnavailable("injected")

        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise boom

        if where == "recovery":
            with pytest.raises(RuntimeError):
                async with t.sessions.actor(sid) as actor:
                    await actor.set_status("running")
                    raise RuntimeError("the turn died")
            monkeypatch.setattr(store, "streams", fail)
        if where == "idle_snapshot":
            monkeypatch.setattr(orch, "idle", fail)
        if where == "drop_lease":
            monkeypatch.setattr(store, "drop_lease", fail)
        if where == "turn":
            monkeypatch.setattr(store, "set_status", fail)
        with pytest.raises((StorageUnavailable, RuntimeError)):
            async with t.sessions.actor(sid) as actor:
                await (await actor.sandbox()).write_file("f.txt", b"x")
                if where == "turn":
                    await actor.set_status("running")
                if where == "idle_snapshot":
                    raise RuntimeError("the turn died")
        monkeypatch.undo()
        async with t.sessions.actor(sid, wait=0) as again:
            assert isinstance(again, SessionActor)


async def test_the_session_row_records_the_sandbox_and_a_restarted_host_reattaches(
    settings: Settings, tmp_path: Path
) -> None:
    async with Platform.open(settings) as oma:
        t, sid = await _session(oma)
        first = SandboxOrchestrator(local_provider(tmp_path / "host", oma.blobs), oma.blobs)

        async def host_one() -> SandboxOrchestrator:
            return first

        async with acquire_actor(
            t.sessions.store, FlockLeaseLock(tmp_path / "l"), sid, telemetry=MemoryTelemetry(), sandboxes=host_one
        ) as actor:
            sb = await actor.sandbox()
            await sb.write_file("live.txt", b"live")
            kept = sb.id
        assert (await t.sessions.store.sandbox_record(sid)).sandbox_id == kept
        await first.provider.aclose()  # host one dies without releasing anything

        telemetry = MemoryTelemetry()
        second = SandboxOrchestrator(local_provider(tmp_path / "host", oma.blobs), oma.blobs, telemetry)

        async def host_two() -> SandboxOrchestrator:
            return second

        async with acquire_actor(
            t.sessions.store, FlockLeaseLock(tmp_path / "l"), sid, telemetry=MemoryTelemetry(), sandboxes=host_two
        ) as actor:
            sb = await actor.sandbox()
            assert sb.id == kept
            assert await sb.read_file("live.txt") == b"live"
        assert actions(telemetry)[:1] == ["reattached"]
        await second.aclose()
        assert (await t.sessions.store.sandbox_record(sid)).sandbox_id is None


async def test_a_failed_restore_through_an_actor_keeps_the_recorded_snapshot(
    settings: Settings, tmp_path: Path, blobs: FlakyBlobs
) -> None:
    async with Platform.open(settings) as oma:
        t, sid = await _session(oma)
        store = t.sessions.store
        orch = orchestrator(tmp_path / "host", blobs, MemoryTelemetry())

        async def sandboxes() -> SandboxOrchestrator:
            return orch

        def actor() -> Any:
            return acquire_actor(
                store, FlockLeaseLock(tmp_path / "l"), sid, telemetry=MemoryTelemetry(), sandboxes=sandboxes
            )

        async with actor() as a:
            await (await a.sandbox()).write_file("work.txt", b"precious")
        await orch.reap(0)  # recycled: the next turn must restore
        good = (await store.sandbox_record(sid)).snapshot
        assert good is not None
        blobs.fail_gets = 1000
        async with actor() as a:
            with pytest.raises(SandboxRestoreFailed):
                await a.sandbox()
        assert (await store.sandbox_record(sid)).snapshot == good
        blobs.fail_gets = 0
        async with actor() as a:
            assert await (await a.sandbox()).read_file("work.txt") == b"precious"
        await orch.aclose()
