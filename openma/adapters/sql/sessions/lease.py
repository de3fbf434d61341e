"""The lease columns of a session row: the epoch every fenced write checks, and who holds it.

Taking the lease bumps ``lease_epoch`` and records the holder in one write unit; a write of an older epoch
is refused from that commit on (see the fence in :mod:`openma.adapters.sql.sessions`). A holder that ends
cleanly clears ``lease_holder``; one that dies leaves it set, which is how the next holder knows to recover.
"""

from __future__ import annotations

from openma.adapters.sql.sessions._base import SessionStoreBase
from openma.core.ids import check_id
from openma.core.validate import text
from openma.errors import NotFound
from openma.ports.sessions import LeaseGrant
from openma.ports.sql import Statement


class LeaseMixin(SessionStoreBase):
    async def take_lease(self, session_id: str, holder: str) -> LeaseGrant:
        check_id(session_id, "ses", what="session_id")
        holder = text(holder, "holder", max_len=200, min_len=1)
        where = "WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL"
        result = await self._db.run_batch(
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
        changed = await self._db.execute(
            "UPDATE sessions SET lease_holder = NULL WHERE tenant_id = ? AND id = ? AND lease_epoch = ?",
            (self.tenant_id, session_id, epoch),
        )
        return changed > 0
