"""The :class:`~openma.ports.sessions.runnable.SessionSchedules` port: a session's wake-ups and its runnable mark.

The runnable mark itself is set by :meth:`SqlInbox.post <openma.adapters.sql.sessions.inbox.SqlInbox.post>`
(:func:`mark_runnable_statement`, in the post's own write unit). Clearing it takes the session row's lock
first (the same lock a post takes), then deletes the mark only if no input is pending: a post either
committed before (its input is seen, the mark stays) or runs after (it marks the session again).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from openma.adapters.sql.sessions.context import SessionPart, check_fence
from openma.adapters.sql.wakeups import SCHEDULE
from openma.core.clock import datetime_to_ms, ms_to_datetime
from openma.core.ids import check_id, new_id
from openma.errors import Conflict, InvalidInput
from openma.ports.sessions.runnable import MAX_WAKEUPS_PER_SESSION, ScheduledWakeup, WakeupKind
from openma.ports.sql import Row, Statement

#: Where the session takes new input (and so new wake-ups): live, not archived, not terminated.
_LIVE: Final = " AND deleted_at IS NULL AND archived_at IS NULL AND status <> 'terminated'"
WAKEUP_COLUMNS: Final = (
    "tenant_id, session_id, id, kind, every_ms, cron, prompt, next_due, fired, last_fired_at, created_at"
)


def mark_runnable_statement(tenant_id: str, session_id: str, now_ms: int) -> Statement:
    """The statement a post runs in its write unit, after its checked bump and its insert: mark the session
    runnable (the bump found it live and not terminated, and the insert gave it pending input)."""
    return Statement(
        "INSERT INTO session_runnable (tenant_id, session_id, since) VALUES (?, ?, ?)"
        " ON CONFLICT (tenant_id, session_id) DO NOTHING",
        (tenant_id, session_id, now_ms),
    )


def forget_statements(tenant_id: str, session_id: str) -> list[Statement]:
    """The statements that take a deleted session out of the index and drop its wake-ups."""
    key = (tenant_id, session_id)
    return [
        Statement("DELETE FROM session_runnable WHERE tenant_id = ? AND session_id = ?", key),
        Statement("DELETE FROM session_wakeups WHERE tenant_id = ? AND session_id = ?", key),
    ]


def wakeup_of(row: Row) -> ScheduledWakeup:
    every = row["every_ms"]
    last = row["last_fired_at"]
    return ScheduledWakeup(
        id=row["id"],
        tenant_id=row["tenant_id"],
        session_id=row["session_id"],
        kind=row["kind"],
        next_due=ms_to_datetime(int(row["next_due"])),
        every=int(every) / 1000 if every is not None else None,
        cron=row["cron"],
        prompt=row["prompt"],
        fired=int(row["fired"]),
        last_fired_at=ms_to_datetime(int(last)) if last is not None else None,
        created_at=ms_to_datetime(int(row["created_at"])),
    )


def _ms(value: object, what: str) -> int:
    if not isinstance(value, datetime):
        raise InvalidInput(f"{what} must be a datetime", field=what)
    try:
        return datetime_to_ms(value)
    except (ValueError, OverflowError, OSError):
        raise InvalidInput(f"{what} must be an aware datetime (UTC)", field=what) from None


class SqlSchedules(SessionPart):
    """A session's wake-ups (add, list, cancel, the conditional advance) and the fenced runnable clear."""

    async def add_wakeup(
        self,
        session_id: str,
        *,
        kind: WakeupKind,
        next_due: datetime,
        every: float | None = None,
        cron: str | None = None,
        prompt: str,
    ) -> ScheduledWakeup:
        check_id(session_id, "ses", what="session_id")
        await self._ctx.tenant.ensure()
        now = self._ctx.clock.now_ms()
        wakeup_id = new_id("wak", now_ms=now)
        every_ms = round(every * 1000) if every is not None else None
        statements = [
            Statement(
                f"UPDATE sessions SET lease_epoch = lease_epoch WHERE tenant_id = ? AND id = ?{_LIVE}",
                (self.tenant_id, session_id),
                expect_rows=True,
            ),
            Statement(
                f"INSERT INTO session_wakeups ({WAKEUP_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?"
                " WHERE (SELECT COUNT(*) FROM session_wakeups WHERE tenant_id = ? AND session_id = ?) < ?",
                (
                    self.tenant_id,
                    session_id,
                    wakeup_id,
                    kind,
                    every_ms,
                    cron,
                    prompt,
                    _ms(next_due, "next_due"),
                    now,
                    self.tenant_id,
                    session_id,
                    MAX_WAKEUPS_PER_SESSION,
                ),
                expect_rows=True,
            ),
        ]
        notify = self._ctx.wakeups.notify_statement(SCHEDULE, self.tenant_id, session_id)
        if notify is not None:
            statements.append(notify)
        result = await self._ctx.db.run_batch(statements)
        if result.aborted_at == 0:
            row = await self._ctx.row(session_id)  # NotFound for a deleted one
            state = "archived" if row["archived_at"] is not None else row["status"]
            raise Conflict(f"session {session_id} is {state}; it takes no wake-ups", session_id=session_id)
        if result.aborted_at == 1:
            raise Conflict(
                f"session {session_id} already has {MAX_WAKEUPS_PER_SESSION} wake-ups; cancel one first",
                session_id=session_id,
            )
        self._ctx.wakeups.notify_local(SCHEDULE, self.tenant_id, session_id)
        stored = await self._ctx.db.fetch_one(
            f"SELECT {WAKEUP_COLUMNS} FROM session_wakeups WHERE tenant_id = ? AND session_id = ? AND id = ?",
            (self.tenant_id, session_id, wakeup_id),
        )
        if stored is None:  # cancelled (or a one-shot fired) between the insert and this read
            raise Conflict(f"wake-up {wakeup_id} is already gone", wakeup_id=wakeup_id)
        return wakeup_of(stored)

    async def list_wakeups(self, session_id: str) -> list[ScheduledWakeup]:
        check_id(session_id, "ses", what="session_id")
        rows = await self._ctx.db.fetch_all(
            f"SELECT {WAKEUP_COLUMNS} FROM session_wakeups WHERE tenant_id = ? AND session_id = ?"
            " ORDER BY next_due, id",
            (self.tenant_id, session_id),
        )
        if not rows:
            await self._ctx.row(session_id)
        return [wakeup_of(r) for r in rows]

    async def cancel_wakeup(self, session_id: str, wakeup_id: str) -> bool:
        check_id(session_id, "ses", what="session_id")
        check_id(wakeup_id, "wak", what="wakeup_id")
        count = await self._ctx.db.execute(
            "DELETE FROM session_wakeups WHERE tenant_id = ? AND session_id = ? AND id = ?",
            (self.tenant_id, session_id, wakeup_id),
        )
        if not count:
            await self._ctx.row(session_id)
        return bool(count)

    async def advance_wakeup(
        self, session_id: str, wakeup_id: str, *, due: datetime, next_due: datetime | None
    ) -> bool:
        check_id(session_id, "ses", what="session_id")
        check_id(wakeup_id, "wak", what="wakeup_id")
        due_ms = _ms(due, "due")
        now = self._ctx.clock.now_ms()
        key = (self.tenant_id, session_id, wakeup_id, due_ms)
        if next_due is None:
            count = await self._ctx.db.execute(
                "DELETE FROM session_wakeups WHERE tenant_id = ? AND session_id = ? AND id = ? AND next_due = ?", key
            )
        else:
            count = await self._ctx.db.execute(
                "UPDATE session_wakeups SET next_due = ?, fired = fired + 1, last_fired_at = ?"
                " WHERE tenant_id = ? AND session_id = ? AND id = ? AND next_due = ?",
                (_ms(next_due, "next_due"), now, *key),
            )
        return bool(count)

    async def is_runnable(self, session_id: str) -> bool:
        check_id(session_id, "ses", what="session_id")
        row = await self._ctx.db.fetch_one(
            "SELECT 1 AS yes FROM session_runnable WHERE tenant_id = ? AND session_id = ?",
            (self.tenant_id, session_id),
        )
        return row is not None

    async def clear_runnable(self, session_id: str, *, fence: int | None = None) -> bool:
        check_id(session_id, "ses", what="session_id")
        fence = check_fence(fence)
        result = await self._ctx.db.run_batch(
            [
                self._ctx.fence_statement(session_id, fence),
                Statement(
                    "DELETE FROM session_runnable WHERE tenant_id = ? AND session_id = ? AND NOT EXISTS (SELECT 1"
                    " FROM session_inbox i WHERE i.tenant_id = ? AND i.session_id = ? AND i.state = 'pending')",
                    (self.tenant_id, session_id, self.tenant_id, session_id),
                ),
                Statement(
                    "SELECT 1 AS still FROM session_runnable WHERE tenant_id = ? AND session_id = ?",
                    (self.tenant_id, session_id),
                    fetch=True,
                ),
            ]
        )
        if not result.committed:
            raise await self._ctx.refusal(session_id, fence) or Conflict("clearing the runnable mark was refused")
        return not result.rows[2]
