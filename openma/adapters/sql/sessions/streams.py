"""Model streams: one row per model call, chunks written in batches, finalized once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openma.adapters.sql.sessions.context import (
    DEFAULT_BATCH,
    MAX_EVENTS_LIMIT,
    MAX_STREAM_ERROR,
    SessionPart,
    check_fence,
    placeholders,
    stream_of,
)
from openma.core import events as ev
from openma.core import validate
from openma.core.clock import ms_to_datetime
from openma.core.ids import check_id, new_id
from openma.core.pagination import (
    Keyset,
    check_limit,
    decode_cursor,
    encode_cursor,
    keyset_clause,
    scope_of,
    split_page,
)
from openma.errors import (
    Conflict,
    InvalidInput,
    NotFound,
)
from openma.models import Page, Stream
from openma.ports.sessions import FINAL_STREAM_STATUSES, STREAM_STATUSES
from openma.ports.sql import Row, Statement


class SqlStreams(SessionPart):
    """The :class:`~openma.ports.sessions.Streams` port: Open, append chunks, finalize, list and prune model streams."""

    async def _stream_text(self, session_id: str, stream_ids: Sequence[str]) -> dict[str, str]:
        if not stream_ids:
            return {}
        rows = await self._ctx.db.fetch_all(
            "SELECT stream_id, text FROM session_stream_chunks WHERE tenant_id = ? AND session_id = ?"
            f" AND stream_id IN ({placeholders(len(stream_ids))}) ORDER BY stream_id, batch",
            (self.tenant_id, session_id, *stream_ids),
        )
        parts: dict[str, list[str]] = {}
        for r in rows:
            parts.setdefault(r["stream_id"], []).append(r["text"])
        return {sid: "".join(p) for sid, p in parts.items()}

    async def _stream_row(self, session_id: str, stream_id: str) -> Row:
        check_id(session_id, "ses", what="session_id")
        check_id(stream_id, "stm", what="stream_id")
        row = await self._ctx.db.fetch_one(
            "SELECT st.* FROM session_streams st JOIN sessions s ON s.tenant_id = st.tenant_id AND s.id = st.session_id"
            " WHERE st.tenant_id = ? AND st.session_id = ? AND st.id = ? AND s.deleted_at IS NULL",
            (self.tenant_id, session_id, stream_id),
        )
        if row is None:
            await self._ctx.row(session_id)
            raise NotFound(f"stream {stream_id} not found in session {session_id}", stream_id=stream_id)
        return row

    async def open_stream(
        self,
        session_id: str,
        *,
        stream_id: str | None = None,
        message_id: str | None = None,
        kind: str = "message",
        fence: int | None = None,
    ) -> Stream:
        check_id(session_id, "ses", what="session_id")
        fence = check_fence(fence)
        stream_id = new_id("stm") if stream_id is None else check_id(stream_id, "stm", what="stream_id")
        if message_id is not None:
            ev.check_event_id(message_id, "message_id")
        kind = validate.text(kind, "kind", max_len=64, min_len=1)
        await self._ctx.tenant.ensure()
        now = self._ctx.clock.now_ms()
        result = await self._ctx.db.run_batch(
            [
                self._ctx.fence_statement(session_id, fence),
                Statement(
                    "INSERT INTO session_streams (tenant_id, session_id, id, kind, message_id, status, batches,"
                    " chunks, error, started_at, finished_at) VALUES (?, ?, ?, ?, ?, 'open', 0, 0, NULL, ?, NULL)"
                    " ON CONFLICT (tenant_id, session_id, id) DO NOTHING RETURNING id",
                    (self.tenant_id, session_id, stream_id, kind, message_id, now),
                    fetch=True,
                ),
            ]
        )
        if not result.committed:
            raise await self._ctx.refusal(session_id, fence) or Conflict("open_stream refused")
        if not result.rows[1]:
            return await self.get_stream(session_id, stream_id)  # opened before: opening is idempotent
        return Stream(stream_id, session_id, kind, "open", message_id, "", 0, ms_to_datetime(now))

    async def append_stream(
        self, session_id: str, stream_id: str, chunks: Sequence[str], *, fence: int | None = None
    ) -> int:
        check_id(session_id, "ses", what="session_id")
        check_id(stream_id, "stm", what="stream_id")
        fence = check_fence(fence)
        parts = ev.check_chunks(chunks)
        statements = [self._ctx.fence_statement(session_id, fence)] if fence is not None else []
        if not parts:
            return (await self.get_stream(session_id, stream_id)).chunks
        await self._ctx.tenant.ensure()
        statements += [
            Statement(
                "UPDATE session_streams SET batches = batches + 1, chunks = chunks + ? WHERE tenant_id = ?"
                " AND session_id = ? AND id = ? AND status = 'open' RETURNING chunks",
                (len(parts), self.tenant_id, session_id, stream_id),
                fetch=True,
                expect_rows=True,
            ),
            Statement(
                "INSERT INTO session_stream_chunks (tenant_id, session_id, stream_id, batch, text)"
                " SELECT tenant_id, session_id, id, batches, ? FROM session_streams"
                " WHERE tenant_id = ? AND session_id = ? AND id = ?",
                ("".join(parts), self.tenant_id, session_id, stream_id),
            ),
        ]
        result = await self._ctx.db.run_batch(statements)
        if result.committed:
            return int(result.rows[-2][0]["chunks"])
        if fence is not None and result.aborted_at == 0:
            raise await self._ctx.refusal(session_id, fence) or Conflict("append_stream refused")
        row = await self._stream_row(session_id, stream_id)
        raise Conflict(
            f"stream {stream_id} is {row['status']}; only open streams take chunks",
            stream_id=stream_id,
            status=row["status"],
        )

    async def finalize_stream(
        self, session_id: str, stream_id: str, status: str, *, error: str | None = None, fence: int | None = None
    ) -> Stream:
        check_id(session_id, "ses", what="session_id")
        check_id(stream_id, "stm", what="stream_id")
        fence = check_fence(fence)
        if status not in FINAL_STREAM_STATUSES:
            raise InvalidInput(
                f"a stream is finalized as one of {', '.join(FINAL_STREAM_STATUSES)}, not {status!r}", field="status"
            )
        if error is not None:
            error = validate.text(error, "error", max_len=MAX_STREAM_ERROR)
        await self._ctx.tenant.ensure()
        now = self._ctx.clock.now_ms()
        result = await self._ctx.db.run_batch(
            [
                self._ctx.fence_statement(session_id, fence),
                Statement(
                    "UPDATE session_streams SET status = ?, error = ?, finished_at = ? WHERE tenant_id = ?"
                    " AND session_id = ? AND id = ? AND status = 'open' RETURNING *",
                    (status, error, now, self.tenant_id, session_id, stream_id),
                    fetch=True,
                    expect_rows=True,
                ),
            ]
        )
        if result.aborted_at == 0:
            raise await self._ctx.refusal(session_id, fence) or Conflict("finalize_stream refused")
        if result.committed:
            row = result.rows[1][0]
            return stream_of(row, (await self._stream_text(session_id, [stream_id])).get(stream_id, ""))
        current = await self.get_stream(session_id, stream_id)
        if current.status == status:
            return current  # finalized before with the same outcome: a retry
        raise Conflict(
            f"stream {stream_id} is already {current.status}; it cannot become {status}",
            stream_id=stream_id,
            status=current.status,
        )

    async def get_stream(self, session_id: str, stream_id: str) -> Stream:
        row = await self._stream_row(session_id, stream_id)
        return stream_of(row, (await self._stream_text(session_id, [stream_id])).get(stream_id, ""))

    async def streams(
        self, session_id: str, *, status: str | None = "open", limit: int = 100, cursor: str | None = None
    ) -> Page[Stream]:
        check_id(session_id, "ses", what="session_id")
        limit = check_limit(limit, maximum=MAX_EVENTS_LIMIT)
        if status is not None and status not in STREAM_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STREAM_STATUSES)} or None", field="status")
        where = "tenant_id = ? AND session_id = ?"
        params: list[Any] = [self.tenant_id, session_id]
        if status is not None:
            where += " AND status = ?"
            params.append(status)
        scope = scope_of("session_streams", self.tenant_id, session_id, status)
        if cursor is not None:
            mark = decode_cursor(cursor, scope)
            where += f" AND {keyset_clause('asc', 'started_at', 'id')}"
            params += [mark.created_at, mark.created_at, mark.id]
        rows = await self._ctx.db.fetch_all(
            f"SELECT * FROM session_streams WHERE {where} ORDER BY started_at, id LIMIT ?", (*params, limit + 1)
        )
        if not rows:
            await self._ctx.row(session_id)
            return Page([])
        page, more = split_page(rows, limit)
        texts = await self._stream_text(session_id, [r["id"] for r in page])
        last = page[-1]
        next_cursor = encode_cursor(scope, Keyset(int(last["started_at"]), str(last["id"]))) if more else None
        return Page([stream_of(r, texts.get(r["id"], "")) for r in page], next_cursor)

    async def delete_stream(self, session_id: str, stream_id: str, batch: int = DEFAULT_BATCH) -> int:
        key = (self.tenant_id, session_id, stream_id)
        while True:
            done = await self._ctx.db.execute(
                "DELETE FROM session_stream_chunks WHERE tenant_id = ? AND session_id = ? AND stream_id = ?"
                " AND batch IN (SELECT batch FROM session_stream_chunks WHERE tenant_id = ? AND session_id = ?"
                " AND stream_id = ? ORDER BY batch LIMIT ?)",
                (*key, *key, batch),
            )
            if done < batch:
                break
        return await self._ctx.db.execute(
            "DELETE FROM session_streams WHERE tenant_id = ? AND session_id = ? AND id = ?", key
        )
