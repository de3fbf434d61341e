"""A session's sandbox record, kept on the session row and written by its lease holder, fenced.

:class:`SessionSandboxIndex` is the :class:`~openma.core.orchestrator.SnapshotIndex` an actor binds its
session's sandbox to: the latest snapshot ref and the provider's sandbox id live in the session row
(:meth:`~openma.ports.sessions.SessionStore.record_sandbox`), and every write carries the actor's lease epoch,
checked in the write's own transaction. A holder that lost its lease therefore cannot make its snapshot the
session's latest, nor name its sandbox as the session's. :meth:`SessionSandboxIndex.check` is the lease
check the orchestrator runs before every sandbox operation made through the actor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from openma.errors import LeaseLost
from openma.ports.sandbox import SnapshotRef
from openma.ports.sessions import SessionStore


class _Latest(Protocol):
    async def latest(self, tenant_id: str, session_id: str) -> SnapshotRef | None: ...


def ref_to_dict(ref: SnapshotRef) -> dict[str, Any]:
    return {
        "key": ref.key,
        "size": ref.size,
        "sha256": ref.sha256,
        "created_at": ref.created_at.isoformat(),
        "expires_at": ref.expires_at.isoformat() if ref.expires_at else None,
    }


def ref_from_dict(d: dict[str, Any]) -> SnapshotRef:
    return SnapshotRef(
        key=str(d["key"]),
        size=int(d["size"]),
        sha256=str(d["sha256"]),
        created_at=datetime.fromisoformat(d["created_at"]),
        expires_at=datetime.fromisoformat(d["expires_at"]) if d.get("expires_at") else None,
    )


class SessionSandboxIndex:
    """The snapshot index of one session, in its row, fenced by ``fence`` (the holder's lease epoch).

    ``legacy`` is read when the row records no snapshot yet (a session snapshotted before the row kept it).
    """

    def __init__(self, store: SessionStore, session_id: str, fence: int, *, legacy: _Latest | None = None) -> None:
        self.store = store
        self.session_id = session_id
        self.fence = fence
        self.legacy = legacy

    def __repr__(self) -> str:
        return f"SessionSandboxIndex({self.session_id!r}, fence={self.fence})"

    def _mine(self, tenant_id: str, session_id: str) -> None:
        if (tenant_id, session_id) != (self.store.tenant_id, self.session_id):
            raise LeaseLost(f"this index is bound to session {self.session_id}", session_id=session_id)

    async def check(self) -> None:
        """``LeaseLost`` unless the session's lease epoch is still this holder's."""
        record = await self.store.sandbox_record(self.session_id)
        if record.lease_epoch != self.fence:
            raise LeaseLost(
                f"session {self.session_id}: lease epoch {self.fence} is stale (now {record.lease_epoch})",
                session_id=self.session_id,
                fence=self.fence,
                epoch=record.lease_epoch,
            )

    async def latest(self, tenant_id: str, session_id: str) -> SnapshotRef | None:
        self._mine(tenant_id, session_id)
        record = await self.store.sandbox_record(session_id)
        if record.snapshot is not None:
            return ref_from_dict(record.snapshot)
        return await self.legacy.latest(tenant_id, session_id) if self.legacy is not None else None

    async def record(self, tenant_id: str, session_id: str, ref: SnapshotRef) -> SnapshotRef | None:
        self._mine(tenant_id, session_id)
        before = await self.store.record_sandbox(session_id, snapshot=ref_to_dict(ref), fence=self.fence)
        return ref_from_dict(before.snapshot) if before.snapshot is not None else None

    async def sandbox_id(self, tenant_id: str, session_id: str) -> str | None:
        self._mine(tenant_id, session_id)
        return (await self.store.sandbox_record(session_id)).sandbox_id

    async def record_sandbox_id(self, tenant_id: str, session_id: str, sandbox_id: str | None) -> None:
        self._mine(tenant_id, session_id)
        await self.store.record_sandbox(session_id, sandbox_id=sandbox_id, fence=self.fence)
