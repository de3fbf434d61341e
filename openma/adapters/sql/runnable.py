"""The :class:`~openma.ports.sessions.runnable.RunnableIndex` of the SQL family: the cross-tenant view workers read.

Every read here is index-backed (``session_runnable_since_idx``, ``session_wakeups_due_idx``) and bounded by
``limit``: its cost follows the runnable backlog, never the number of sessions. Idle workers wait on the
backend's shared wake-ups (:data:`~openma.adapters.sql.wakeups.ANY_WORK`: set by every post and schedule
change, across processes on an engine with a wake-up channel), re-reading every :meth:`poll_timeout`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from openma.adapters.sql.sessions.schedules import WAKEUP_COLUMNS, wakeup_of
from openma.adapters.sql.wakeups import ANY_WORK, SessionWakeups
from openma.core.clock import Clock, SystemClock, datetime_to_ms, ms_to_datetime
from openma.core.ids import check_id
from openma.errors import InvalidInput
from openma.ports.sessions.runnable import Runnable, ScheduledWakeup
from openma.ports.sessions.values import Wakeup
from openma.ports.sql import SqlClient, Statement

MAX_LIMIT: Final = 1000


def _limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    return value


class SqlRunnableIndex:
    """The runnable index and due wake-ups of every tenant of one backend (admin: not tenant-scoped)."""

    def __init__(self, client: SqlClient, wakeups: SessionWakeups, clock: Clock | None = None) -> None:
        self._db = client
        self._wakeups = wakeups
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"SqlRunnableIndex({self._db!r})"

    async def admin_runnable(self, *, limit: int = 100) -> list[Runnable]:
        rows = await self._db.fetch_all(
            "SELECT tenant_id, session_id, since FROM session_runnable ORDER BY since, tenant_id, session_id LIMIT ?",
            (_limit(limit),),
        )
        return [Runnable(r["tenant_id"], r["session_id"], ms_to_datetime(int(r["since"]))) for r in rows]

    async def admin_drop_runnable(self, tenant_id: str, session_id: str) -> bool:
        check_id(tenant_id, "tnt", what="tenant_id")
        check_id(session_id, "ses", what="session_id")
        gone = (
            "NOT EXISTS (SELECT 1 FROM sessions s WHERE s.tenant_id = ? AND s.id = ?"
            " AND s.deleted_at IS NULL AND s.status <> 'terminated')"
        )
        key = (tenant_id, session_id)
        result = await self._db.run_batch(
            [
                Statement(
                    f"DELETE FROM session_runnable WHERE tenant_id = ? AND session_id = ? AND {gone}", (*key, *key)
                ),
                Statement(
                    f"DELETE FROM session_wakeups WHERE tenant_id = ? AND session_id = ? AND {gone}", (*key, *key)
                ),
            ]
        )
        return bool(result.rowcounts[0])

    async def admin_due_wakeups(self, *, now: datetime, limit: int = 100) -> list[ScheduledWakeup]:
        if not isinstance(now, datetime):
            raise InvalidInput("now must be a datetime", field="now")
        rows = await self._db.fetch_all(
            f"SELECT {WAKEUP_COLUMNS} FROM session_wakeups WHERE next_due <= ?"
            " ORDER BY next_due, tenant_id, session_id, id LIMIT ?",
            (datetime_to_ms(now), _limit(limit)),
        )
        return [wakeup_of(r) for r in rows]

    async def admin_next_due(self) -> datetime | None:
        row = await self._db.fetch_one("SELECT MIN(next_due) AS due FROM session_wakeups")
        if row is None or row["due"] is None:
            return None
        return ms_to_datetime(int(row["due"]))

    def arm(self) -> Wakeup:
        self._wakeups.start()
        return self._wakeups.hub.arm(ANY_WORK)

    def poll_timeout(self) -> float:
        return self._wakeups.wait_timeout()
