"""The event log: fenced, deduplicated appends with seqs minted in the write unit; paged reads; ``read_after``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from openma.adapters.sql.sessions.context import (
    ALL_SEQS,
    EVENT_COLUMNS,
    INSERT_EVENT,
    MAX_EVENTS_LIMIT,
    WRITE_RETRIES,
    Item,
    SessionPart,
    check_fence,
    placeholders,
    seq_arg,
)
from openma.adapters.sql.wakeups import EVENTS
from openma.core import events as ev
from openma.core.clock import ms_to_datetime
from openma.core.ids import check_id
from openma.core.pagination import (
    Keyset,
    Order,
    check_limit,
    check_order,
    decode_cursor,
    encode_cursor,
    scope_of,
    split_page,
)
from openma.errors import (
    Conflict,
    InvalidInput,
    LeaseLost,
    NotFound,
    StorageUnavailable,
)
from openma.models import Event, Page, event_from_row
from openma.ports.sql import Row, Statement, TupleRow

_FENCE_SQL: Final = " AND lease_epoch = ?"
#: The session to bump: live, by tenant and id (parameters: the tenant, the session).
_LIVE_SESSION: Final = " WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL"
_BUMP: Final = f"UPDATE sessions SET last_seq = last_seq + ?{_LIVE_SESSION} RETURNING last_seq"
_BUMP_FENCED: Final = f"UPDATE sessions SET last_seq = last_seq + ?{_LIVE_SESSION}{_FENCE_SQL} RETURNING last_seq"
#: The select list of the new rows: the bumped session ``s`` and the values ``v`` (seq, id, type, text, blob key).
#: The head of the portable unit's insert (see :meth:`~openma.adapters.sql.engine.SqlEngine.rows_below_counter`).
_EVENT_HEAD: Final = INSERT_EVENT.rstrip()
_SELECT_NEW: Final = (
    "SELECT s.tenant_id, s.id, s.last_seq - ? + v.column1, v.column2, v.column3, v.column4, v.column5, ?"
)


class SqlEventLog(SessionPart):
    """The :class:`~openma.ports.sessions.EventLog` port: appends (also the unit of a status change) and reads."""

    async def append(
        self, session_id: str, events: Sequence[dict[str, Any]], *, fence: int | None = None
    ) -> list[Event]:
        check_id(session_id, "ses", what="session_id")
        fence = check_fence(fence)
        prepared = ev.prepare_batch(events, max_bytes=self._ctx.max_event_bytes)
        if not prepared:
            await self._ctx.row(session_id)
            return []
        written, _ = await self.write_events(session_id, prepared, fence=fence)
        return written

    def _append_statements(
        self,
        session_id: str,
        items: Sequence[Item],
        now: int,
        fence: int | None,
        status: tuple[str, tuple[str, ...]] | None,
    ) -> tuple[list[Statement], int | None]:
        """The write unit of an append (and of a status change); returns it and the index of the insert.

        When the insert returns its rows (``fetch``), they are the ``seq, event_id`` of the stored events (the
        engine's one-statement form); otherwise the first statement (the bump) returns the session's new
        ``last_seq`` and the events took the seqs just below it, in order.
        """
        n = len(items)
        fence_params = [fence] if fence is not None else []
        values, value_params = self._ctx.values(items)
        if status is None:
            # An engine that can do the bump, the check, the notification and the insert in one statement
            # (Postgres) says so; the others run the portable unit below.
            if self._ctx.one_statement_append:
                dedup_sql, dedup_params = self._dedup_guard(session_id, items)
                statement = self._ctx.engine.fenced_append_statement(
                    tenant_id=self.tenant_id,
                    session_id=session_id,
                    count=n,
                    guard_sql=_FENCE_SQL if fence is not None else "",
                    guard_params=fence_params,
                    insert_sql=INSERT_EVENT + _SELECT_NEW,
                    values_sql=values,
                    insert_params=[n, now, *value_params],
                    dedup_sql=dedup_sql,
                    dedup_params=dedup_params,
                )
                if statement is not None:
                    return [statement], 0
            bump = _BUMP_FENCED if fence is not None else _BUMP
            statements = [Statement(bump, [n, self.tenant_id, session_id, *fence_params], fetch=True, expect_rows=True)]
        else:
            fence_sql = _FENCE_SQL if fence is not None else ""
            statements = [
                Statement(
                    f"UPDATE sessions SET last_seq = last_seq + ?, status = ?, updated_at = ?{_LIVE_SESSION}"
                    f"{fence_sql} AND status IN ({placeholders(len(status[1]))}) RETURNING *",
                    [n, status[0], now, self.tenant_id, session_id, *fence_params, *status[1]],
                    fetch=True,
                    expect_rows=True,
                )
            ]
        # No "none of the ids is logged" guard here: an id already in the log fails the insert on the log's
        # unique event-id index, which the caller treats as a retry (the unit is rolled back as a whole, the ids
        # are looked up and only the others are written). The insert probes that index once per event anyway.
        insert_at: int | None = None
        if n:
            insert_at = len(statements)
            # The seqs are known from the bump's RETURNING, so the insert returns nothing.
            statements.append(
                self._ctx.engine.rows_below_counter(
                    head=_EVENT_HEAD,
                    counter="last_seq",
                    tenant_id=self.tenant_id,
                    session_id=session_id,
                    count=n,
                    rows=value_params,
                    tail=(now,),
                )
            )
            notify = self._ctx.wakeups.notify_statement(EVENTS, self.tenant_id, session_id)
            if notify is not None:
                statements.append(notify)
        return statements, insert_at

    def _dedup_guard(self, session_id: str, items: Sequence[Item]) -> tuple[str, list[Any]]:
        """The "none of the ids is in the log" condition offered to an engine's one-statement append (see
        :meth:`~openma.adapters.sql.engine.SqlEngine.fenced_append_statement`, which may use it or rely on the
        unique event-id index instead, as the portable unit does)."""
        if not items:
            return "", []
        sql, params = self._ctx.engine.event_ids_absent(
            "session_events", self.tenant_id, session_id, [it.id for it in items]
        )
        return f" AND {sql}", params

    async def write_events(
        self,
        session_id: str,
        prepared: Sequence[ev.PreparedEvent],
        *,
        fence: int | None,
        status: tuple[str, tuple[str, ...]] | None = None,
    ) -> tuple[list[Event], Row | None]:
        """Append ``prepared`` (and change the status, if asked) in one unit, deduplicating by event id."""
        items, written = await self._ctx.spill(session_id, ev.unique(prepared))
        stored: dict[str, tuple[Event, str | None]] = {}
        session_row: Row | None = None
        definite = False  # whether the outcome is known (an in-doubt commit keeps its blobs)
        try:
            todo = items
            for _ in range(WRITE_RETRIES):
                now = self._ctx.clock.now_ms()
                statements, insert_at = self._append_statements(session_id, todo, now, fence, status)
                try:
                    result = await self._ctx.db.run_batch(statements)
                except StorageUnavailable:
                    raise
                except Exception as exc:
                    if not self._ctx.db.dialect.is_unique_violation(exc):
                        definite = True
                        raise
                    found = await self._ctx.events_by_id(session_id, [it.id for it in todo])
                    if not found:
                        definite = True
                        raise
                    stored.update(found)
                    todo = [it for it in todo if it.id not in found]
                    if not todo and status is None:
                        definite = True
                        break
                    continue
                # The one-statement form (Postgres) has no abort: it inserts nothing when the guard fails.
                returned = insert_at is not None and statements[insert_at].fetch
                refused = not result.committed or (returned and not result.rows[insert_at or 0])
                if refused:
                    definite = True
                    refusal = await self._ctx.refusal(session_id, fence, status)
                    stale = isinstance(refusal, NotFound | LeaseLost) or (
                        refusal is not None and "status" in refusal.details
                    )
                    found = {} if stale else await self._ctx.events_by_id(session_id, [it.id for it in todo])
                    if found:  # a retry: some ids are in the log already; write the others (or nothing)
                        stored.update(found)
                        todo = [it for it in todo if it.id not in found]
                        if not todo and status is None:
                            break
                        continue
                    if refusal is None:  # already in the target status: a retried transition
                        found = await self._ctx.events_by_id(session_id, [it.id for it in todo])
                        if len(found) == len(todo):
                            stored.update(found)
                            session_row = await self._ctx.row(session_id)
                            break
                        refusal = Conflict(f"session {session_id} is already in that status", session_id=session_id)
                    raise refusal
                definite = True
                if status is not None:
                    session_row = result.rows[0][0]
                if insert_at is not None:
                    at = ms_to_datetime(now)  # one time for the whole unit
                    if returned:
                        by_id = {it.id: it for it in todo}
                        for got in result.rows[insert_at]:
                            it = by_id[got["event_id"]]
                            stored[it.id] = (event_from_row(it.id, it.type, int(got["seq"]), at, it.data), it.key)
                    else:  # the bump returned the new last seq: the events took the seqs just below it, in order
                        first = int(result.rows[0][0]["last_seq"]) - len(todo)
                        for k, it in enumerate(todo, 1):
                            stored[it.id] = (event_from_row(it.id, it.type, first + k, at, it.data), it.key)
                    self._ctx.wakeups.notify_local(EVENTS, self.tenant_id, session_id)
                break
            else:
                raise Conflict(
                    f"appending to session {session_id} kept colliding with concurrent writers; retry",
                    session_id=session_id,
                )
        finally:
            if definite and written:
                keep = {key for _, key in stored.values() if key is not None}
                await self._ctx.drop_blobs(k for k in written if k not in keep)
        return [stored[p.id][0] for p in prepared], session_row

    async def _read(
        self,
        session_id: str,
        *,
        after: int,
        before: int | None,
        limit: int,
        types: Sequence[str] | None,
        order: Order,
    ) -> tuple[list[TupleRow], int]:
        """Up to ``limit`` event rows in ``(after, before)`` and the session's retained-from seq.

        The rows are tuples: the columns of ``EVENT_COLUMNS``, then the mark.

        Both come from one statement (one snapshot), so a concurrent prune is seen consistently by both; only
        when no event matches does a second, point read fetch the mark (it can only have grown since, so a
        gap it reveals is real). The session's row is read as a scalar subquery: no join, no extra sort.
        """
        where = "tenant_id = ? AND session_id = ? AND seq > ?"
        params: list[Any] = [self.tenant_id, session_id, after]
        if before is not None:
            where += " AND seq < ?"
            params.append(before)
        if types:
            where += f" AND type IN ({placeholders(len(types))})"
            params += list(types)
        direction = "ASC" if order == "asc" else "DESC"
        rows = await self._ctx.db.fetch_tuples(
            f"SELECT {EVENT_COLUMNS}, (SELECT retained_from_seq FROM sessions WHERE tenant_id = ? AND id = ?"
            f" AND deleted_at IS NULL) AS retained_from_seq FROM session_events WHERE {where}"
            f" ORDER BY seq {direction} LIMIT ?",
            (self.tenant_id, session_id, *params, limit),
        )
        mark = rows[0][6] if rows else await self._retained_from(session_id)
        if mark is None:
            raise NotFound(f"session {session_id} not found", session_id=session_id)
        return rows, int(mark)

    async def _retained_from(self, session_id: str) -> int | None:
        row = await self._ctx.db.fetch_one(
            "SELECT retained_from_seq FROM sessions WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL",
            (self.tenant_id, session_id),
        )
        return None if row is None else int(row["retained_from_seq"])

    async def events(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        limit: int = 100,
        types: Sequence[str] | None = None,
        cursor: str | None = None,
        order: Order = "asc",
    ) -> Page[Event]:
        check_id(session_id, "ses", what="session_id")
        after = seq_arg(after, "after")
        if before is not None:
            before = seq_arg(before, "before", minimum=1)
        limit = check_limit(limit, maximum=MAX_EVENTS_LIMIT)
        order = check_order(order)
        type_list: list[str] | None = None
        if types is not None:
            if isinstance(types, str) or not isinstance(types, Sequence) or not types:
                raise InvalidInput("types must be a non-empty list of event types", field="types")
            type_list = sorted({ev.check_type(t, "types[]") for t in types})
        scope = scope_of("session_events", self.tenant_id, session_id, order, type_list, after, before)
        lo, hi = after, before
        if cursor is not None:
            mark = decode_cursor(cursor, scope).created_at
            if not 0 <= mark <= ALL_SEQS:
                raise InvalidInput("cursor is malformed", field="cursor")
            if order == "asc":
                lo = max(lo, mark)
            else:
                hi = mark if hi is None else min(hi, mark)
        rows, retained_from = await self._read(
            session_id, after=lo, before=hi, limit=limit + 1, types=type_list, order=order
        )
        page, more = split_page(rows, limit)
        gap = retained_from > lo + 1 and (hi is None or hi > lo + 1)
        if gap and (order == "asc" or not more):
            raise self._ctx.resync(session_id, lo, retained_from)
        next_cursor = None
        if more:
            last = page[-1]
            next_cursor = encode_cursor(scope, Keyset(int(last[0]), str(last[1])))
        return Page(await self._ctx.page_events(page), next_cursor)

    async def read_after(self, session_id: str, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with ``seq > after`` in order; ``ResyncRequired`` below the retained range."""
        self._ctx.wakeups.start()
        rows, retained_from = await self._read(
            session_id, after=after, before=None, limit=limit, types=None, order="asc"
        )
        if retained_from > after + 1:
            raise self._ctx.resync(session_id, after, retained_from)
        return await self._ctx.page_events(rows)

    async def get_event(self, session_id: str, event_id: str) -> Event:
        check_id(session_id, "ses", what="session_id")
        ev.check_event_id(event_id, "event_id")
        rows = await self._ctx.db.fetch_all(
            "SELECT e.seq, e.event_id, e.type, e.data, e.blob_key, e.created_at FROM session_events e"
            " JOIN sessions s ON s.tenant_id = e.tenant_id AND s.id = e.session_id"
            " WHERE e.tenant_id = ? AND e.session_id = ? AND e.event_id = ? AND s.deleted_at IS NULL",
            (self.tenant_id, session_id, event_id),
        )
        if not rows:
            await self._ctx.row(session_id)
            raise NotFound(f"event {event_id} not found in session {session_id}", event_id=event_id)
        return (await self._ctx.to_events(rows))[0]
