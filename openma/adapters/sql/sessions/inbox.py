"""The inbox: durable, deduplicated, FIFO inputs, promoted into the log exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from openma.adapters.sql.sessions.context import (
    EVENT_COLUMNS,
    INSERT_EVENT,
    MAX_EVENTS_LIMIT,
    WRITE_RETRIES,
    Item,
    SessionPart,
    check_fence,
    placeholders,
)
from openma.adapters.sql.sessions.schedules import mark_runnable_statement
from openma.adapters.sql.wakeups import EVENTS, INBOX
from openma.core import events as ev
from openma.core.clock import ms_to_datetime
from openma.core.ids import check_id
from openma.core.pagination import Keyset, check_limit, decode_cursor, encode_cursor, scope_of, split_page
from openma.errors import (
    Conflict,
    NotFound,
    OpenmaError,
    StorageUnavailable,
)
from openma.models import Event, InboxItem, Page
from openma.ports.sql import Row, Statement

#: The session takes new input: live (not deleted), not archived, not terminated.
_LIVE: Final = " AND deleted_at IS NULL AND archived_at IS NULL AND status <> 'terminated'"
#: The head of a post's insert: the bumped session as ``s`` (its new ``last_inbox_pos``), the inputs as ``v``
#: (``column1`` is the input's 1-based index in the post); parameters: the count, then the time twice.
_INSERT_INBOX: Final = (
    "INSERT INTO session_inbox (tenant_id, session_id, pos, event_id, type, data, blob_key, state, seq, created_at,"
    " updated_at) SELECT s.tenant_id, s.id, s.last_inbox_pos - ? + v.column1, v.column2, v.column3, v.column4,"
    " v.column5, 'pending', NULL, ?, ?"
)
#: The head of the portable unit's insert (see :meth:`~openma.adapters.sql.engine.SqlEngine.rows_below_counter`).
_INBOX_HEAD: Final = (
    "INSERT INTO session_inbox (tenant_id, session_id, pos, event_id, type, data, blob_key, state, seq, created_at,"
    " updated_at)"
)


class SqlInbox(SessionPart):
    """The :class:`~openma.ports.sessions.Inbox` port: post, page what is pending, promote, cancel."""

    def _inbox_item(self, row: Row, data: dict[str, Any]) -> InboxItem:
        return InboxItem(
            event_id=row["event_id"],
            type=row["type"],
            position=int(row["pos"]),
            state=row["state"],
            data=data,
            seq=int(row["seq"]) if row["seq"] is not None else None,
            created_at=ms_to_datetime(row["created_at"]),
            updated_at=ms_to_datetime(row["updated_at"]),
        )

    async def _inbox_items(self, rows: Sequence[Row]) -> list[InboxItem]:
        return [self._inbox_item(r, data) for r, data in await self._ctx.hydrate(rows)]

    async def _inbox_by_id(self, session_id: str, ids: Sequence[str]) -> dict[str, Row]:
        if not ids:
            return {}
        source, params = self._ctx.engine.event_id_rows("session_inbox", "i", self.tenant_id, session_id, ids)
        rows = await self._ctx.db.fetch_all(f"SELECT i.* FROM {source}", params)
        return {r["event_id"]: r for r in rows}

    async def post(self, session_id: str, events: Sequence[dict[str, Any]]) -> list[InboxItem]:
        check_id(session_id, "ses", what="session_id")
        prepared = ev.prepare_batch(events, max_bytes=self._ctx.max_event_bytes)
        if not prepared:
            await self._ctx.row(session_id)
            return []
        items, written = await self._ctx.spill(session_id, ev.unique(prepared))
        stored: dict[str, tuple[InboxItem, str | None]] = {}
        definite = False
        collided = False
        try:
            todo = items
            for _ in range(WRITE_RETRIES):
                if not todo:
                    break
                now = self._ctx.clock.now_ms()
                statements, one = self._post_statements(session_id, todo, now)
                try:
                    result = await self._ctx.db.run_batch(statements)
                except StorageUnavailable:
                    raise
                except Exception as exc:
                    if not self._ctx.db.dialect.is_unique_violation(exc):
                        definite = True
                        raise
                    # Nothing of the unit was written. An id already in the inbox is a retry: return it as it
                    # is and write only the others.
                    found = await self._inbox_by_id(session_id, [it.id for it in todo])
                    if not found and collided:
                        definite = True
                        raise
                    # No id was there: a position was taken (or the colliding input was removed in between by
                    # retention); the unit is tried once more.
                    collided = not found
                    rows = list(found.values())
                    for item, row in zip(await self._inbox_items(rows), rows, strict=True):
                        stored[item.event_id] = (item, row["blob_key"])
                    todo = [it for it in todo if it.id not in found]
                    continue
                definite = True
                # The session takes no input: nothing was written (the portable unit aborted at its bump; the
                # one-statement form inserted nothing).
                if not result.committed or (one and not result.rows[0]):
                    raise await self._post_refusal(session_id)
                at = ms_to_datetime(now)
                if one:
                    by_id = {it.id: it for it in todo}
                    for got in result.rows[0]:
                        it = by_id[got["event_id"]]
                        stored[it.id] = (
                            InboxItem(it.id, it.type, int(got["pos"]), "pending", it.data, None, at, at),
                            it.key,
                        )
                else:  # the bump returned the new last position: the inputs took the positions just below it
                    first = int(result.rows[0][0]["last_inbox_pos"]) - len(todo)
                    for k, it in enumerate(todo, 1):
                        stored[it.id] = (InboxItem(it.id, it.type, first + k, "pending", it.data, None, at, at), it.key)
                self._ctx.wakeups.notify_local(INBOX, self.tenant_id, session_id)
                todo = []
                break
            else:
                raise Conflict(f"posting to session {session_id} kept colliding; retry", session_id=session_id)
            definite = True
        finally:
            if definite and written:
                keep = {key for _, key in stored.values() if key is not None}
                await self._ctx.drop_blobs(k for k in written if k not in keep)
        return [stored[p.id][0] for p in prepared]

    def _post_statements(self, session_id: str, todo: Sequence[Item], now: int) -> tuple[list[Statement], bool]:
        """The write unit of a post of ``todo`` and whether it is the engine's one statement (Postgres).

        Either way the unit writes every input of ``todo`` or nothing: the session takes no input (the portable
        unit aborts at its bump, the one statement returns no rows), or an id is in the inbox already (the
        unique event-id index fails it with a unique violation, and the caller treats that as a retry).
        """
        n = len(todo)
        values, value_params = self._ctx.values(todo)
        one = self._ctx.engine.inbox_post_statement(
            tenant_id=self.tenant_id,
            session_id=session_id,
            count=n,
            live_sql=_LIVE,
            insert_sql=_INSERT_INBOX,
            values_sql=values,
            insert_params=[n, now, now, *value_params],
            # What mark_runnable_statement does, for a session known to be live with pending input.
            runnable_sql="INSERT INTO session_runnable (tenant_id, session_id, since) SELECT s.tenant_id, s.id, ?"
            " FROM s ON CONFLICT (tenant_id, session_id) DO NOTHING",
            runnable_params=[now],
        )
        if one is not None:
            return [one], True
        # The portable unit, in the append's shape: bump the session's counter by n (only while it takes
        # input; the bump's lock orders concurrent posts) and read the new value back, insert the inputs at the
        # positions just below it, then mark the session runnable. Positions stay gapless: the unit inserts all
        # n inputs or fails whole.
        statements = [
            Statement(
                f"UPDATE sessions SET last_inbox_pos = last_inbox_pos + ? WHERE tenant_id = ? AND id = ?{_LIVE}"
                " RETURNING last_inbox_pos",
                (n, self.tenant_id, session_id),
                fetch=True,
                expect_rows=True,
            ),
            self._ctx.engine.rows_below_counter(
                head=_INBOX_HEAD,
                counter="last_inbox_pos",
                tenant_id=self.tenant_id,
                session_id=session_id,
                count=n,
                rows=value_params,
                tail=("pending", None, now, now),
            ),
            # Pending input makes the session runnable, in this same unit (see .schedules).
            mark_runnable_statement(self.tenant_id, session_id, now),
        ]
        notify = self._ctx.wakeups.notify_statement(INBOX, self.tenant_id, session_id)
        if notify is not None:
            statements.append(notify)
        return statements, False

    async def _post_refusal(self, session_id: str) -> OpenmaError:
        row = await self._ctx.row(session_id)
        if row["archived_at"] is not None:
            return Conflict(f"session {session_id} is archived; it takes no new input", session_id=session_id)
        if row["status"] == "terminated":
            return Conflict(f"session {session_id} is terminated; it takes no new input", session_id=session_id)
        return Conflict(f"session {session_id} changed during the post; retry", session_id=session_id)

    async def pending(self, session_id: str, *, limit: int = 100, cursor: str | None = None) -> Page[InboxItem]:
        check_id(session_id, "ses", what="session_id")
        limit = check_limit(limit, maximum=MAX_EVENTS_LIMIT)
        scope = scope_of("session_inbox", self.tenant_id, session_id, "pending")
        after = decode_cursor(cursor, scope).created_at if cursor is not None else 0
        rows = await self._ctx.db.fetch_all(
            "SELECT * FROM session_inbox WHERE tenant_id = ? AND session_id = ? AND state = 'pending'"
            " AND pos > ? ORDER BY pos LIMIT ?",
            (self.tenant_id, session_id, after, limit + 1),
        )
        if not rows:
            await self._ctx.row(session_id)
            return Page([])
        page, more = split_page(rows, limit)
        next_cursor = encode_cursor(scope, Keyset(int(page[-1]["pos"]), str(page[-1]["event_id"]))) if more else None
        return Page(await self._inbox_items(page), next_cursor)

    async def promote(self, session_id: str, event_ids: Sequence[str], *, fence: int | None = None) -> list[Event]:
        check_id(session_id, "ses", what="session_id")
        fence = check_fence(fence)
        ids = list(dict.fromkeys(ev.check_event_ids(event_ids)))
        if not ids:
            await self._ctx.row(session_id)
            return []
        await self._ctx.tenant.ensure()
        done: dict[str, Event] = {}
        todo = ids
        for _ in range(WRITE_RETRIES + len(ids)):
            if not todo:
                break
            now = self._ctx.clock.now_ms()
            n = len(todo)
            fence_sql, fence_params = (" AND lease_epoch = ?", [fence]) if fence is not None else ("", [])
            statements = [
                Statement(
                    "UPDATE sessions SET last_seq = last_seq + ? WHERE tenant_id = ? AND id = ?"
                    f" AND deleted_at IS NULL{fence_sql}",
                    (n, self.tenant_id, session_id, *fence_params),
                    expect_rows=True,
                )
            ]
            inbox_key = self._ctx.engine.event_id_key("session_inbox", "?")
            log_key = self._ctx.engine.event_id_key("e", "?")
            for k, event_id in enumerate(todo, 1):
                statements.append(
                    Statement(
                        "UPDATE session_inbox SET state = 'promoted', updated_at = ?,"
                        " seq = (SELECT last_seq FROM sessions WHERE tenant_id = ? AND id = ?) - ?"
                        f" WHERE {inbox_key} AND state = 'pending'"
                        # Already in the log (appended there directly): refused here rather than by the insert.
                        f" AND NOT EXISTS (SELECT 1 FROM session_events e WHERE {log_key})",
                        (
                            now,
                            self.tenant_id,
                            session_id,
                            n - k,
                            self.tenant_id,
                            session_id,
                            event_id,
                            self.tenant_id,
                            session_id,
                            event_id,
                        ),
                        expect_rows=True,
                    )
                )
            insert_at = len(statements)
            statements.append(self._promoted_insert(session_id, todo, now))
            notify = self._ctx.wakeups.notify_statement(EVENTS, self.tenant_id, session_id)
            if notify is not None:
                statements.append(notify)
            try:
                result = await self._ctx.db.run_batch(statements)
            except StorageUnavailable:
                raise
            except Exception as exc:
                if not self._ctx.db.dialect.is_unique_violation(exc):
                    raise
                # Some ids are in the log already (appended there directly): settle their inbox rows.
                found = await self._ctx.events_by_id(session_id, todo)
                if not found:
                    raise
                await self._settle_promoted(session_id, {eid: e.seq for eid, (e, _) in found.items()}, fence)
                done.update({eid: e for eid, (e, _) in found.items()})
                todo = [i for i in todo if i not in found]
                continue
            if result.committed:
                for event in await self._ctx.to_events(result.rows[insert_at]):
                    done[event.id] = event
                self._ctx.wakeups.notify_local(EVENTS, self.tenant_id, session_id)
                todo = []
                break
            if result.aborted_at == 0:
                raise await self._ctx.refusal(session_id, fence) or Conflict("promotion refused")
            assert result.aborted_at is not None
            stuck = todo[result.aborted_at - 1]
            row = (await self._inbox_by_id(session_id, [stuck])).get(stuck)
            if row is None:
                raise NotFound(f"session {session_id} has no input {stuck} in its inbox", event_id=stuck)
            if row["state"] == "cancelled":
                raise Conflict(f"input {stuck} was cancelled and cannot be promoted", event_id=stuck)
            if row["state"] == "promoted":  # promoted before: exactly once, so return what the log holds
                found = await self._ctx.events_by_id(session_id, [stuck])
                if stuck not in found:
                    raise NotFound(f"input {stuck} was promoted but its event is gone (pruned)", event_id=stuck)
                done[stuck] = found[stuck][0]
                todo = [i for i in todo if i != stuck]
            elif row["state"] == "pending":  # its id is in the log already: settle the inbox row to that event
                found = await self._ctx.events_by_id(session_id, [stuck])
                if stuck in found:
                    event = found[stuck][0]
                    await self._settle_promoted(session_id, {stuck: event.seq}, fence)
                    done[stuck] = event
                    todo = [i for i in todo if i != stuck]
        else:
            raise Conflict(f"promoting inputs of session {session_id} kept colliding; retry", session_id=session_id)
        return [done[i] for i in ids]

    def _promoted_insert(self, session_id: str, ids: Sequence[str], now: int) -> Statement:
        """The promote's insert: the log's rows of the inputs ``ids``, just marked promoted (looked up by id)."""
        rows, params = self._ctx.engine.event_id_rows("session_inbox", "i", self.tenant_id, session_id, ids)
        return Statement(
            f"{INSERT_EVENT}SELECT i.tenant_id, i.session_id, i.seq, i.event_id, i.type, i.data, i.blob_key, ?"
            f" FROM {rows} WHERE i.state = 'promoted' RETURNING {EVENT_COLUMNS}",
            (now, *params),
            fetch=True,
        )

    async def _settle_promoted(self, session_id: str, seqs: dict[str, int], fence: int | None) -> None:
        fence_sql, fence_params = (" AND lease_epoch = ?", [fence]) if fence is not None else ("", [])
        now = self._ctx.clock.now_ms()
        statements = [
            Statement(
                f"UPDATE sessions SET lease_epoch = lease_epoch WHERE tenant_id = ? AND id = ?{fence_sql}",
                (self.tenant_id, session_id, *fence_params),
                expect_rows=True,
            )
        ]
        for event_id, seq in seqs.items():
            statements.append(
                Statement(
                    "UPDATE session_inbox SET state = 'promoted', seq = ?, updated_at = ? WHERE tenant_id = ?"
                    " AND session_id = ? AND event_id = ? AND state = 'pending'",
                    (seq, now, self.tenant_id, session_id, event_id),
                )
            )
        result = await self._ctx.db.run_batch(statements)
        if not result.committed:
            raise await self._ctx.refusal(session_id, fence) or Conflict("promotion refused")

    async def cancel(
        self, session_id: str, event_ids: Sequence[str] | None = None, *, fence: int | None = None
    ) -> list[InboxItem]:
        check_id(session_id, "ses", what="session_id")
        fence = check_fence(fence)
        ids = None if event_ids is None else list(dict.fromkeys(ev.check_event_ids(event_ids)))
        if ids == []:
            await self._ctx.row(session_id)
            return []
        await self._ctx.tenant.ensure()
        fence_sql, fence_params = (" AND lease_epoch = ?", [fence]) if fence is not None else ("", [])
        now = self._ctx.clock.now_ms()
        which, which_params = ("", []) if ids is None else (f" AND event_id IN ({placeholders(len(ids))})", ids)
        result = await self._ctx.db.run_batch(
            [
                Statement(
                    "UPDATE sessions SET lease_epoch = lease_epoch WHERE tenant_id = ? AND id = ?"
                    f" AND deleted_at IS NULL{fence_sql}",
                    (self.tenant_id, session_id, *fence_params),
                    expect_rows=True,
                ),
                Statement(
                    "UPDATE session_inbox SET state = 'cancelled', updated_at = ? WHERE tenant_id = ?"
                    f" AND session_id = ? AND state = 'pending'{which} RETURNING *",
                    (now, self.tenant_id, session_id, *which_params),
                    fetch=True,
                ),
            ]
        )
        if not result.committed:
            raise await self._ctx.refusal(session_id, fence) or Conflict("cancel refused")
        rows = sorted(result.rows[1], key=lambda r: int(r["pos"]))
        return await self._inbox_items(rows)
