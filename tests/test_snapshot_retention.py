"""Snapshots live under their tenant and die with their session; ``gc`` sweeps expired blobs; the snapshots
and spills an older release wrote (``sandbox-snapshots/<tenant>/``, ``t/<tenant>/sessions/``) still restore,
read, and go with their session. Every SQL engine."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.sandboxes.local import LocalSandboxConfig, LocalSandboxProvider
from openma.adapters.sql.backend import SqlStoreBackend
from openma.core import events as ev
from openma.core import keys
from openma.core.orchestrator import BlobSnapshotIndex, SandboxOrchestrator, _ref_to_json
from openma.errors import InvalidInput, NotFound
from openma.ports.sandbox import SnapshotRef
from openma.ports.tenancy import TenantRef
from openma.settings import Settings

pytestmark = pytest.mark.anyio

AGENT = "agt_01m8000000000000000000000a"
ENVIRONMENT = "env_01m8000000000000000000000a"


class ManualClock:
    def __init__(self) -> None:
        self.ms = 1_900_000_000_000

    def now_ms(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def root(tmp_path: Path, clock: ManualClock) -> AsyncIterator[FsspecBlobStore]:
    store = await FsspecBlobStore.open(f"file://{tmp_path}/blobs", clock=clock)
    yield store
    await store.aclose()


@pytest.fixture
def orch(tmp_path: Path, root: FsspecBlobStore) -> SandboxOrchestrator:
    provider = LocalSandboxProvider(LocalSandboxConfig(root=str(tmp_path / "sandboxes"), kill_grace=0.5), blobs=root)
    return SandboxOrchestrator(provider, root)


async def sessions_store(backend: SqlStoreBackend, root: FsspecBlobStore) -> tuple[str, Any]:
    tenant = await backend.tenants.create(name=f"t-{uuid.uuid4().hex[:6]}")
    blobs = root.for_tenant(tenant.id, internal=True)
    store = backend.sessions(TenantRef(tenant.id), blobs=blobs, settings=Settings(event_spill_bytes=200))
    return tenant.id, store


async def new_session(store: Any) -> str:
    s = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    return str(s.id)


async def keys_under(store: FsspecBlobStore, prefix: str) -> list[str]:
    return [i.key for i in (await store.list(prefix, limit=1000)).items]


def big(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text * 300}]}


async def legacy_snapshot(root: FsspecBlobStore, tenant_id: str, session_id: str, ref: SnapshotRef) -> SnapshotRef:
    """Move ``ref`` (and the session's latest ref) to where the previous release kept them."""
    old = keys.legacy_snapshot_root_prefix(tenant_id, session_id)
    moved = SnapshotRef(
        key=f"{old}snp_legacy.tar.gz", size=ref.size, sha256=ref.sha256, created_at=ref.created_at, expires_at=None
    )
    await root.put(moved.key, await root.get(ref.key))
    await root.put(f"{old}latest.json", _ref_to_json(moved))
    for key in await keys_under(root, keys.snapshot_root_prefix(tenant_id, session_id)):
        await root.delete(key)
    return moved


async def test_snapshots_live_under_the_tenant_and_go_with_the_session(
    store_backend: SqlStoreBackend, root: FsspecBlobStore, orch: SandboxOrchestrator
) -> None:
    tenant_id, store = await sessions_store(store_backend, root)
    gone, kept = await new_session(store), await new_session(store)
    try:
        for sid in (gone, kept):
            sb = await orch.get(tenant_id, sid)
            await sb.write_file("work.txt", sid.encode())
            taken = await sb.snapshot()
            assert taken.key.startswith(f"t/{tenant_id}/.openma/snapshots/{sid}/")
            await orch.release(sid, snapshot=False)
        # One more from the previous release (outside the tenant), and spills old and new.
        latest = await BlobSnapshotIndex(root).latest(tenant_id, gone)
        assert latest is not None
        old = await legacy_snapshot(root, tenant_id, gone, latest)
        await store.append(gone, [big("new")])
        with pytest.MonkeyPatch.context() as mp:  # what the previous release wrote: t/<tenant>/sessions/...
            mp.setattr(ev, "spill_key", lambda sid, p: _legacy_spill(sid, p))
            await store.append(gone, [big("old")])
        assert await keys_under(root, f"t/{tenant_id}/sessions/{gone}/")
        assert [e.data["content"][0]["text"][:3] for e in (await store.events(gone)).items] == ["new", "old"]

        await store.delete(gone)

        assert await keys_under(root, keys.snapshot_root_prefix(tenant_id, gone)) == []
        assert await keys_under(root, keys.legacy_snapshot_root_prefix(tenant_id, gone)) == []
        assert await keys_under(root, f"t/{tenant_id}/.openma/sessions/{gone}/") == []
        assert await keys_under(root, f"t/{tenant_id}/sessions/{gone}/") == []
        with pytest.raises(NotFound):
            await root.get(old.key)
        # The other session keeps its snapshot, and restores from it.
        assert len(await keys_under(root, keys.snapshot_root_prefix(tenant_id, kept))) == 2  # tarball + latest
        assert await (await orch.get(tenant_id, kept)).read_file("work.txt") == kept.encode()
    finally:
        await orch.aclose()


def _legacy_spill(session_id: str, prepared: Any) -> ev.Spill:
    """The spill key layout of the previous release: ``sessions/<session>/events/...`` at the tenant's root."""
    digest = hashlib.sha256(prepared.body).hexdigest()
    return ev.Spill(f"sessions/{session_id}/events/{prepared.id}.{digest[:32]}.json", prepared.size, digest)


async def test_a_snapshot_from_the_previous_release_still_restores(
    root: FsspecBlobStore, orch: SandboxOrchestrator
) -> None:
    tenant_id, sid = "tnt_01m8000000000000000000000a", "ses_01m8000000000000000000000b"
    try:
        sb = await orch.get(tenant_id, sid)
        await sb.write_file("work.txt", b"from the previous release")
        ref = await sb.snapshot()
        await orch.release(sid, snapshot=False)
        old = await legacy_snapshot(root, tenant_id, sid, ref)

        warm = await orch.get(tenant_id, sid)
        assert await warm.read_file("work.txt") == b"from the previous release"
        # The next snapshot is taken at the new place, and the old tarball goes.
        new = await warm.snapshot()
        assert new.key.startswith(keys.snapshot_root_prefix(tenant_id, sid))
        assert (await BlobSnapshotIndex(root).latest(tenant_id, sid)) == new
        with pytest.raises(NotFound):
            await root.get(old.key)
        # Another tenant's snapshot, old place or new, is refused.
        other = "tnt_01m8000000000000000000000z"
        for key in (f"sandbox-snapshots/{other}/{sid}/x.tar.gz", f"t/{other}/.openma/snapshots/{sid}/x.tar.gz"):
            with pytest.raises(InvalidInput):
                await warm.restore(SnapshotRef(key=key, size=1, sha256="0" * 64, created_at=datetime.now(UTC)))
    finally:
        await orch.aclose()


async def test_gc_sweeps_expired_blobs(
    store_backend: SqlStoreBackend, root: FsspecBlobStore, clock: ManualClock
) -> None:
    tenant_id, store = await sessions_store(store_backend, root)
    other_id, _ = await sessions_store(store_backend, root)
    sid = await new_session(store)
    snap = keys.snapshot_root_prefix(tenant_id, sid)
    await root.put(f"{snap}snp_a.tar.gz", b"a", ttl=60)
    await root.put(keys.legacy_snapshot_root_prefix(tenant_id, sid) + "snp_b.tar.gz", b"b", ttl=60)
    await root.for_tenant(tenant_id).put("mine/ttl.txt", b"c", ttl=60)
    await root.for_tenant(tenant_id).put("mine/forever.txt", b"d")
    await root.for_tenant(other_id).put("theirs.txt", b"e", ttl=60)
    report = await store.gc(datetime.now(UTC))
    assert report.expired_blobs == 0
    clock.ms += 61_000
    report = await store.gc(datetime.now(UTC))
    assert report.expired_blobs == 3  # the snapshot, the old-place snapshot, the tenant's TTL'd blob
    assert (await store.gc(datetime.now(UTC))).expired_blobs == 0
    assert await root.for_tenant(tenant_id).get("mine/forever.txt") == b"d"
    assert await root.for_tenant(other_id).sweep_expired() == 1  # another tenant's is its own gc's


def test_the_snapshot_layout_is_spelled_in_one_place() -> None:
    tenant, session = "tnt_01m8000000000000000000000a", "ses_01m8000000000000000000000b"
    root = f"t/{tenant}/.openma/snapshots/{session}/"
    assert keys.snapshot_root_prefix(tenant, session) == root
    assert keys.tenant_root(tenant) + keys.snapshot_prefix(session) == root
    fresh = keys.new_snapshot_key(tenant, session)
    assert fresh.startswith(root + "snp_") and fresh.endswith(".tar.gz")
    assert fresh != keys.new_snapshot_key(tenant, session)
    assert keys.blob_key(fresh.removeprefix(keys.tenant_root(tenant) + ".openma/")) is not None
    assert keys.tenant_owns_snapshot(tenant, fresh)
    assert not keys.tenant_owns_snapshot("tnt_01m8000000000000000000000c", fresh)
    assert keys.latest_snapshot_key(tenant, session) == root + "latest.json"
    assert BlobSnapshotIndex.key(tenant, session) == keys.latest_snapshot_key(tenant, session)
    legacy = keys.legacy_latest_snapshot_key(tenant, session)
    assert legacy == f"sandbox-snapshots/{tenant}/{session}/latest.json"
    assert keys.tenant_owns_snapshot(tenant, legacy)
