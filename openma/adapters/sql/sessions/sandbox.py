"""The sandbox columns of a session row: the provider's sandbox id and the latest workspace snapshot ref.

Both are written by the session's lease holder (its actor, through the sandbox orchestrator) and fenced like
every other write of the holder: the epoch is checked by the statement that locks the row, in the same
write unit as the update, so a holder that lost its lease cannot make its snapshot the session's latest.
"""

from __future__ import annotations

from typing import Any, Final

from openma.adapters.sql.sessions._base import SessionStoreBase, _check_fence
from openma.core import validate
from openma.core.ids import check_id
from openma.core.jsonutil import dumps, loads
from openma.errors import NotFound
from openma.ports.sessions import UNSET, SandboxRecord
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


class SandboxRecordMixin(SessionStoreBase):
    async def sandbox_record(self, session_id: str) -> SandboxRecord:
        check_id(session_id, "ses", what="session_id")
        row = await self._db.fetch_one(
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
        fence = _check_fence(fence)
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
            self._fence_statement(session_id, fence),
            Statement(f"SELECT {_COLUMNS} FROM sessions {where}", (self.tenant_id, session_id), fetch=True),
        ]
        if sets:
            unit.append(
                Statement(f"UPDATE sessions SET {', '.join(sets)} {where}", (*params, self.tenant_id, session_id))
            )
        result = await self._db.run_batch(unit)
        if not result.committed:
            refusal = await self._refusal(session_id, fence)
            raise refusal if refusal is not None else NotFound(f"session {session_id} not found")
        return _record(result.rows[1][0])
