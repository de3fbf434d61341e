"""The lease and sandbox columns of a session row.

The lease columns: the epoch every fenced write checks, and who holds it.

Taking the lease bumps ``lease_epoch`` and records the holder in one write unit; a write of an older epoch
is refused from that commit on (see the fence in :mod:`openma.adapters.sql.sessions`). A holder that ends
cleanly clears ``lease_holder``; one that dies leaves it set, which is how the next holder knows to recover.

The sandbox columns of a session row (the provider's sandbox id and the latest workspace snapshot ref) are
written by the session's lease holder (its actor, through the sandbox orchestrator) and fenced like every
other write of the holder: the epoch is checked by the statement that locks the row, in the same
write unit as the update, so a holder that lost its lease cannot make its snapshot the session's latest.
"""

from __future__ import annotations

from typing import Any, Final

from openma.adapters.sql.sessions.context import SessionPart, check_fence
from openma.core import validate
from openma.core.ids import check_id
from openma.core.jsonutil import dumps, loads
from openma.core.validate import text
from openma.errors import NotFound
from openma.ports.sessions import UNSET, LeaseGrant, SandboxRecord
from openma.ports.sql import Row, Statement

MAX_SNAPSHOT_REF_BYTES: Final = 4096
_COLUMNS: Final = "lease_epoch, sandbox_id, sandbox_snapshot"


def _record(row: Row) -> SandboxRecord:
    raw = row["sandbox_snapshot"]
    return SandboxRecord(
        lease_epoch=int(row["lease_epoch"]),
        sandbox_id=row["sandbox_id"],
        snapshot=loads(raw) if raw is not None else None,
    )


class SqlSessionLease(SessionPart):
    """The :class:`~openma.ports.sessions.SessionLease` port: the lease columns and the sandbox columns."""

    async def take_lease(self, session_id: str, holder: str) -> LeaseGrant:
        check_id(session_id, "ses", what="session_id")
        holder = text(holder, "holder", max_len=200, min_len=1)
        where = "WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL"
        result = await self._ctx.db.run_batch(
            [
                Statement(
                    f"SELECT lease_holder, lease_epoch, status FROM sessions {where}",
                    (self.tenant_id, session_id),
                    fetch=True,
                    expect_rows=True,
                ),
                Statement(
                    f"UPDATE sessions SET lease_epoch = lease_epoch + 1, lease_holder = ? {where}"
                    " RETURNING lease_epoch, status",
                    (holder, self.tenant_id, session_id),
                    fetch=True,
                    expect_rows=True,
                ),
            ]
        )
        if not result.committed:
            raise NotFound(f"session {session_id} not found", session_id=session_id)
        before, after = result.rows[0][0], result.rows[1][0]
        return LeaseGrant(
            epoch=int(after["lease_epoch"]),
            previous_holder=before["lease_holder"],
            status=str(after["status"]),
        )

    async def drop_lease(self, session_id: str, epoch: int) -> bool:
        check_id(session_id, "ses", what="session_id")
        changed = await self._ctx.db.execute(
            "UPDATE sessions SET lease_holder = NULL WHERE tenant_id = ? AND id = ? AND lease_epoch = ?",
            (self.tenant_id, session_id, epoch),
        )
        return changed > 0

    async def sandbox_record(self, session_id: str) -> SandboxRecord:
        check_id(session_id, "ses", what="session_id")
        row = await self._ctx.db.fetch_one(
            f"SELECT {_COLUMNS} FROM sessions WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL",
            (self.tenant_id, session_id),
        )
        if row is None:
            raise NotFound(f"session {session_id} not found", session_id=session_id)
        return _record(row)

    async def record_sandbox(
        self,
        session_id: str,
        *,
        sandbox_id: Any = UNSET,
        snapshot: Any = UNSET,
        fence: int | None = None,
    ) -> SandboxRecord:
        check_id(session_id, "ses", what="session_id")
        fence = check_fence(fence)
        sets: list[str] = []
        params: list[Any] = []
        if sandbox_id is not UNSET:
            sets.append("sandbox_id = ?")
            params.append(
                None if sandbox_id is None else validate.text(sandbox_id, "sandbox_id", max_len=200, min_len=1)
            )
        if snapshot is not UNSET:
            sets.append("sandbox_snapshot = ?")
            if snapshot is None:
                params.append(None)
            else:
                ref = validate.json_object(snapshot, "snapshot", max_bytes=MAX_SNAPSHOT_REF_BYTES)
                params.append(dumps(ref, what="snapshot"))
        where = "WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL"
        unit = [
            self._ctx.fence_statement(session_id, fence),
            Statement(f"SELECT {_COLUMNS} FROM sessions {where}", (self.tenant_id, session_id), fetch=True),
        ]
        if sets:
            unit.append(
                Statement(f"UPDATE sessions SET {', '.join(sets)} {where}", (*params, self.tenant_id, session_id))
            )
        result = await self._ctx.db.run_batch(unit)
        if not result.committed:
            refusal = await self._ctx.refusal(session_id, fence)
            raise refusal if refusal is not None else NotFound(f"session {session_id} not found")
        return _record(result.rows[1][0])
