"""Model streams: one row per model call, chunks written in batches, finalized once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from openma.adapters.sql.sessions._base import (
    DEFAULT_BATCH,
    MAX_EVENTS_LIMIT,
    MAX_STREAM_ERROR,
    SessionStoreBase,
    _check_fence,
    _placeholders,
    _stream,
)
from openma.core import events as ev
from openma.core import validate
from openma.core.clock import ms_to_datetime
from openma.core.ids import check_id, new_id
from openma.core.pagination import (
    check_limit,
)
from openma.errors import (
    Conflict,
    InvalidInput,
    NotFound,
)
from openma.models import Stream
from openma.ports.sessions import FINAL_STREAM_STATUSES, STREAM_STATUSES
from openma.ports.sql import Row, Statement


class StreamsMixin(SessionStoreBase):
    """Open, append chunks, finalize, list and prune model streams."""

    async def _stream_text(self, session_id: str, stream_ids: Sequence[str]) -> dict[str, str]:
        if not stream_ids:
            return {}
        rows = await self._db.fetch_all(
            "SELECT stream_id, text FROM session_stream_chunks WHERE tenant_id = ? AND session_id = ?"
            f" AND stream_id IN ({_placeholders(len(stream_ids))}) ORDER BY stream_id, batch",
            (self.tenant_id, session_id, *stream_ids),
        )
        parts: dict[str, list[str]] = {}
        for r in rows:
            parts.setdefault(r["stream_id"], []).append(r["text"])
        return {sid: "".join(p) for sid, p in parts.items()}

    async def _stream_row(self, session_id: str, stream_id: str) -> Row:
        check_id(session_id, "ses", what="session_id")
        check_id(stream_id, "stm", what="stream_id")
        row = await self._db.fetch_one(
            "SELECT st.* FROM session_streams st JOIN sessions s ON s.tenant_id = st.tenant_id AND s.id = st.session_id"
            " WHERE st.tenant_id = ? AND st.session_id = ? AND st.id = ? AND s.deleted_at IS NULL",
            (self.tenant_id, session_id, stream_id),
        )
        if row is None:
            await self._row(session_id)
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
        fence = _check_fence(fence)
        stream_id = new_id("stm") if stream_id is None else check_id(stream_id, "stm", what="stream_id")
        if message_id is not None:
            ev.check_event_id(message_id, "message_id")
        kind = validate.text(kind, "kind", max_len=64, min_len=1)
        await self._tenant.ensure()
        now = self._clock.now_ms()
        result = await self._db.run_batch(
            [
                self._fence_statement(session_id, fence),
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
            raise await self._refusal(session_id, fence) or Conflict("open_stream refused")
        if not result.rows[1]:
            return await self.get_stream(session_id, stream_id)  # opened before: opening is idempotent
        return Stream(stream_id, session_id, kind, "open", message_id, "", 0, ms_to_datetime(now))

    async def append_stream(
        self, session_id: str, stream_id: str, chunks: Sequence[str], *, fence: int | None = None
    ) -> int:
        check_id(session_id, "ses", what="session_id")
        check_id(stream_id, "stm", what="stream_id")
        fence = _check_fence(fence)
        parts = ev.check_chunks(chunks)
        statements = [self._fence_statement(session_id, fence)] if fence is not None else []
        if not parts:
            return (await self.get_stream(session_id, stream_id)).chunks
        await self._tenant.ensure()
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
        result = await self._db.run_batch(statements)
        if result.committed:
            return int(result.rows[-2][0]["chunks"])
        if fence is not None and result.aborted_at == 0:
            raise await self._refusal(session_id, fence) or Conflict("append_stream refused")
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
        fence = _check_fence(fence)
        if status not in FINAL_STREAM_STATUSES:
            raise InvalidInput(
                f"a stream is finalized as one of {', '.join(FINAL_STREAM_STATUSES)}, not {status!r}", field="status"
            )
        if error is not None:
            error = validate.text(error, "error", max_len=MAX_STREAM_ERROR)
        await self._tenant.ensure()
        now = self._clock.now_ms()
        result = await self._db.run_batch(
            [
                self._fence_statement(session_id, fence),
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
            raise await self._refusal(session_id, fence) or Conflict("finalize_stream refused")
        if result.committed:
            row = result.rows[1][0]
            return _stream(row, (await self._stream_text(session_id, [stream_id])).get(stream_id, ""))
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
        return _stream(row, (await self._stream_text(session_id, [stream_id])).get(stream_id, ""))

    async def streams(self, session_id: str, *, status: str | None = "open", limit: int = 100) -> list[Stream]:
        check_id(session_id, "ses", what="session_id")
        limit = check_limit(limit, maximum=MAX_EVENTS_LIMIT)
        if status is not None and status not in STREAM_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STREAM_STATUSES)} or None", field="status")
        where, params = "tenant_id = ? AND session_id = ?", [self.tenant_id, session_id]
        if status is not None:
            where += " AND status = ?"
            params.append(status)
        rows = await self._db.fetch_all(
            f"SELECT * FROM session_streams WHERE {where} ORDER BY started_at, id LIMIT ?", (*params, limit)
        )
        if not rows:
            await self._row(session_id)
            return []
        texts = await self._stream_text(session_id, [r["id"] for r in rows])
        return [_stream(r, texts.get(r["id"], "")) for r in rows]

    async def prune_streams(
        self, session_id: str, *, older_than: datetime | None = None, fence: int | None = None
    ) -> int:
        check_id(session_id, "ses", what="session_id")
        fence = _check_fence(fence)
        cutoff = validate.time_bound(older_than, "older_than")
        if fence is not None:
            result = await self._db.run_batch([self._fence_statement(session_id, fence)])
            if not result.committed:
                raise await self._refusal(session_id, fence) or Conflict("prune_streams refused")
        else:
            await self._row(session_id)
        where = "tenant_id = ? AND session_id = ? AND status <> 'open'"
        params: list[Any] = [self.tenant_id, session_id]
        if cutoff is not None:
            where += " AND finished_at < ?"
            params.append(cutoff)
        removed = 0
        while True:
            rows = await self._db.fetch_all(
                f"SELECT id FROM session_streams WHERE {where} ORDER BY id LIMIT ?", (*params, DEFAULT_BATCH)
            )
            for r in rows:
                removed += await self._delete_stream(session_id, r["id"])
            if len(rows) < DEFAULT_BATCH:
                return removed

    async def _delete_stream(self, session_id: str, stream_id: str, batch: int = DEFAULT_BATCH) -> int:
        key = (self.tenant_id, session_id, stream_id)
        while True:
            done = await self._db.execute(
                "DELETE FROM session_stream_chunks WHERE tenant_id = ? AND session_id = ? AND stream_id = ?"
                " AND batch IN (SELECT batch FROM session_stream_chunks WHERE tenant_id = ? AND session_id = ?"
                " AND stream_id = ? ORDER BY batch LIMIT ?)",
                (*key, *key, batch),
            )
            if done < batch:
                break
        return await self._db.execute(
            "DELETE FROM session_streams WHERE tenant_id = ? AND session_id = ? AND id = ?", key
        )
