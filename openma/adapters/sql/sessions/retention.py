"""Retention: prune a log's prefix, tenant-wide gc, and the batched removal of deleted sessions.

A deleted session takes its blobs with it: its spilled events and its workspace snapshots, at their
current location (the tenant's ``.openma/`` area) and at the ones older releases used. ``gc`` also
sweeps the tenant's expired blobs (``GcReport.expired_blobs``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from openma.adapters.sql.sessions.context import (
    ALL_SEQS,
    DEFAULT_BATCH,
    SessionContext,
    SessionPart,
    batch_arg,
    check_fence,
    placeholders,
    seq_arg,
)
from openma.adapters.sql.sessions.streams import SqlStreams
from openma.core import events as ev
from openma.core import keys, validate
from openma.core.ids import check_id
from openma.errors import (
    Conflict,
    InvalidInput,
)
from openma.models import GcReport
from openma.ports.blobs import BlobStore
from openma.ports.sql import Statement


class SqlRetention(SessionPart):
    """The :class:`~openma.ports.sessions.Retention` port: prune, gc and purge, always in bounded batches."""

    def __init__(self, ctx: SessionContext, streams: SqlStreams) -> None:
        super().__init__(ctx)
        self._streams = streams

    async def prune(
        self,
        session_id: str,
        *,
        before_seq: int | None = None,
        older_than: datetime | None = None,
        keep_last: int | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> int:
        check_id(session_id, "ses", what="session_id")
        batch_size = batch_arg(batch_size)
        given = [
            name
            for name, v in (("before_seq", before_seq), ("older_than", older_than), ("keep_last", keep_last))
            if v is not None
        ]
        if len(given) != 1:
            raise InvalidInput("prune takes exactly one of before_seq, older_than, keep_last", field="prune")
        row = await self._ctx.row(session_id)
        last = int(row["last_seq"])
        if before_seq is not None:
            upto = min(seq_arg(before_seq, "before_seq", minimum=1), last + 1)
        elif keep_last is not None:
            upto = last + 1 - seq_arg(keep_last, "keep_last")
        else:
            cutoff = validate.time_bound(older_than, "older_than")
            assert cutoff is not None
            upto = await self._first_newer(session_id, int(row["retained_from_seq"]), last, cutoff)
        removed, _ = await self._prune_upto(session_id, upto, batch_size)
        return removed

    async def _first_newer(self, session_id: str, retained_from: int, last: int, cutoff: int) -> int:
        """The seq of the first retained event created at or after ``cutoff`` (``last + 1`` if none): pruning
        below it removes a prefix, so the log stays gapless even if clocks made ``created_at`` wobble."""
        row = await self._ctx.db.fetch_one(
            "SELECT seq FROM session_events WHERE tenant_id = ? AND session_id = ? AND seq >= ? AND created_at >= ?"
            " ORDER BY seq LIMIT 1",
            (self.tenant_id, session_id, retained_from, cutoff),
        )
        return int(row["seq"]) if row is not None else last + 1

    async def _prune_upto(self, session_id: str, upto: int, batch_size: int) -> tuple[int, int]:
        """Remove events with ``seq < upto`` in batches; each batch advances the low-water mark with it."""
        removed = blobs = 0
        while True:
            row = await self._ctx.db.fetch_one(
                "SELECT retained_from_seq, last_seq FROM sessions WHERE tenant_id = ? AND id = ?",
                (self.tenant_id, session_id),
            )
            if row is None:
                return removed, blobs
            lo = int(row["retained_from_seq"])
            target = min(upto, int(row["last_seq"]) + 1)
            if lo >= target:
                return removed, blobs
            hi = min(target, lo + batch_size)
            keyed = await self._ctx.db.fetch_all(
                "SELECT event_id, blob_key FROM session_events WHERE tenant_id = ? AND session_id = ? AND seq >= ?"
                " AND seq < ? AND blob_key IS NOT NULL",
                (self.tenant_id, session_id, lo, hi),
            )
            result = await self._ctx.db.run_batch(
                [
                    Statement(
                        "UPDATE sessions SET retained_from_seq = ? WHERE tenant_id = ? AND id = ?"
                        " AND retained_from_seq = ?",
                        (hi, self.tenant_id, session_id, lo),
                        expect_rows=True,
                    ),
                    Statement(
                        "DELETE FROM session_events WHERE tenant_id = ? AND session_id = ? AND seq >= ? AND seq < ?",
                        (self.tenant_id, session_id, lo, hi),
                    ),
                    Statement(
                        "DELETE FROM session_inbox WHERE tenant_id = ? AND session_id = ? AND state = 'promoted'"
                        " AND seq < ?",
                        (self.tenant_id, session_id, hi),
                    ),
                ]
            )
            if not result.committed:
                continue  # another pruner moved the mark: re-read it
            removed += result.rowcounts[1]
            keys = [r["blob_key"] for r in keyed]
            if keys:
                in_use = await self._ctx.db.fetch_all(
                    "SELECT blob_key FROM session_inbox WHERE tenant_id = ? AND session_id = ? AND state = 'pending'"
                    f" AND blob_key IN ({placeholders(len(keys))})",
                    (self.tenant_id, session_id, *keys),
                )
                busy = {r["blob_key"] for r in in_use}
                blobs += await self._ctx.drop_blobs(k for k in keys if k not in busy)

    async def purge(self, session_id: str, batch_size: int) -> int:
        """Empty a session marked deleted, batch by batch, then remove its row. Returns blobs removed."""
        _, blobs = await self._prune_upto(session_id, ALL_SEQS, batch_size)
        key = (self.tenant_id, session_id)
        while (
            await self._ctx.db.execute(
                "DELETE FROM session_inbox WHERE tenant_id = ? AND session_id = ? AND pos IN (SELECT pos FROM"
                " session_inbox WHERE tenant_id = ? AND session_id = ? ORDER BY pos LIMIT ?)",
                (*key, *key, batch_size),
            )
            >= batch_size
        ):
            pass
        while True:
            rows = await self._ctx.db.fetch_all(
                "SELECT id FROM session_streams WHERE tenant_id = ? AND session_id = ? ORDER BY id LIMIT ?",
                (*key, batch_size),
            )
            for r in rows:
                await self._streams.delete_stream(session_id, r["id"], batch_size)
            if len(rows) < batch_size:
                break
        blobs += await self._sweep_blobs(ev.session_blob_prefix(session_id))
        blobs += await self._sweep_blobs(keys.legacy_spill_prefix(session_id))
        blobs += await self._sweep_blobs(keys.snapshot_prefix(session_id))
        # Snapshots taken before they moved under the tenant: the internal view knows where they are.
        legacy = getattr(self._ctx.blobs, "legacy_snapshots", None)
        if legacy is not None:
            blobs += await self._sweep_blobs(f"{session_id}/", legacy)
        await self._ctx.db.execute(
            "DELETE FROM sessions WHERE tenant_id = ? AND id = ? AND deleted_at IS NOT NULL", key
        )
        return blobs

    async def _sweep_blobs(self, prefix: str, blobs: BlobStore | None = None) -> int:
        store = blobs if blobs is not None else self._ctx.blobs
        if store is None:
            return 0
        removed = 0
        cursor: str | None = None
        while True:
            page = await store.list(prefix, cursor=cursor, limit=1000)
            for info in page.items:
                await store.delete(info.key)
                removed += 1
            if page.next_cursor is None:
                return removed
            cursor = page.next_cursor

    async def prune_streams(
        self, session_id: str, *, older_than: datetime | None = None, fence: int | None = None
    ) -> int:
        check_id(session_id, "ses", what="session_id")
        fence = check_fence(fence)
        cutoff = validate.time_bound(older_than, "older_than")
        if fence is not None:
            result = await self._ctx.db.run_batch([self._ctx.fence_statement(session_id, fence)])
            if not result.committed:
                raise await self._ctx.refusal(session_id, fence) or Conflict("prune_streams refused")
        else:
            await self._ctx.row(session_id)
        where = "tenant_id = ? AND session_id = ? AND status <> 'open'"
        params: list[Any] = [self.tenant_id, session_id]
        if cutoff is not None:
            where += " AND finished_at < ?"
            params.append(cutoff)
        removed = 0
        while True:
            rows = await self._ctx.db.fetch_all(
                f"SELECT id FROM session_streams WHERE {where} ORDER BY id LIMIT ?", (*params, DEFAULT_BATCH)
            )
            for r in rows:
                removed += await self._streams.delete_stream(session_id, r["id"])
            if len(rows) < DEFAULT_BATCH:
                return removed

    async def gc(self, cutoff: datetime, *, batch_size: int = DEFAULT_BATCH, dry_run: bool = False) -> GcReport:
        """Tenant-wide retention pass (see the port's docstring); every step runs in bounded batches.

        With ``dry_run`` nothing is removed: the report counts what a pass would remove now (its ``blobs``
        counts spilled events and cancelled inbox payloads, not the listing of a deleted session's prefix).
        """
        cut = validate.time_bound(cutoff, "cutoff")
        if cut is None:
            raise InvalidInput("cutoff must be a timezone-aware datetime, not None", field="cutoff")
        batch_size = batch_arg(batch_size)
        if not isinstance(dry_run, bool):
            raise InvalidInput("dry_run must be True or False", field="dry_run")
        if dry_run:
            return await self._gc_count(cut, batch_size)
        events = inbox = streams = sessions = blobs = 0
        # 1. Finish deletes that a crash interrupted.
        while True:
            rows = await self._ctx.db.fetch_all(
                "SELECT id FROM sessions WHERE tenant_id = ? AND deleted_at IS NOT NULL ORDER BY id LIMIT ?",
                (self.tenant_id, batch_size),
            )
            for r in rows:
                blobs += await self.purge(r["id"], batch_size)
                sessions += 1
            if len(rows) < batch_size:
                break
        # 2. Events older than the cutoff, session by session (a prefix of each log).
        last_id = ""
        while True:
            rows = await self._ctx.db.fetch_all(
                "SELECT s.id AS id, s.retained_from_seq AS retained_from_seq, s.last_seq AS last_seq,"
                " e.created_at AS oldest FROM sessions s JOIN session_events e ON e.tenant_id = s.tenant_id"
                " AND e.session_id = s.id AND e.seq = s.retained_from_seq WHERE s.tenant_id = ? AND s.id > ?"
                " AND s.deleted_at IS NULL ORDER BY s.id LIMIT ?",
                (self.tenant_id, last_id, batch_size),
            )
            for r in rows:
                if int(r["oldest"]) < cut:
                    upto = await self._first_newer(r["id"], int(r["retained_from_seq"]), int(r["last_seq"]), cut)
                    n, b = await self._prune_upto(r["id"], upto, batch_size)
                    events += n
                    blobs += b
            if len(rows) < batch_size:
                break
            last_id = rows[-1]["id"]
        # 3. Finalized streams finished before the cutoff.
        while True:
            rows = await self._ctx.db.fetch_all(
                "SELECT session_id, id FROM session_streams WHERE tenant_id = ? AND status <> 'open'"
                " AND finished_at < ? ORDER BY session_id, id LIMIT ?",
                (self.tenant_id, cut, batch_size),
            )
            for r in rows:
                streams += await self._streams.delete_stream(r["session_id"], r["id"], batch_size)
            if len(rows) < batch_size:
                break
        # 4. Settled inbox rows (promoted or cancelled) last touched before the cutoff.
        while True:
            rows = await self._ctx.db.fetch_all(
                "SELECT session_id, pos, event_id, blob_key, state FROM session_inbox WHERE tenant_id = ?"
                " AND state <> 'pending' AND updated_at < ? ORDER BY session_id, pos LIMIT ?",
                (self.tenant_id, cut, batch_size),
            )
            for r in rows:
                inbox += await self._ctx.db.execute(
                    "DELETE FROM session_inbox WHERE tenant_id = ? AND session_id = ? AND pos = ?"
                    " AND state <> 'pending'",
                    (self.tenant_id, r["session_id"], r["pos"]),
                )
            cancelled = [r for r in rows if r["state"] == "cancelled" and r["blob_key"] is not None]
            for r in cancelled:
                logged = await self._ctx.db.fetch_one(
                    "SELECT blob_key FROM session_events WHERE tenant_id = ? AND session_id = ? AND event_id = ?",
                    (self.tenant_id, r["session_id"], r["event_id"]),
                )
                if logged is None or logged["blob_key"] != r["blob_key"]:
                    blobs += await self._ctx.drop_blobs([r["blob_key"]])
            if len(rows) < batch_size:
                break
        # 5. Blobs past their TTL (snapshots, anything the tenant stored with a TTL): reclaim the space.
        expired = await self._ctx.blobs.sweep_expired() if self._ctx.blobs is not None else 0
        legacy = getattr(self._ctx.blobs, "legacy_snapshots", None)
        if legacy is not None:
            expired += await legacy.sweep_expired()
        return GcReport(
            events=events, inbox=inbox, streams=streams, sessions=sessions, blobs=blobs, expired_blobs=expired
        )

    async def _gc_count(self, cut: int, batch_size: int) -> GcReport:
        """What :meth:`gc` would remove now, counted without writing."""
        t = self.tenant_id
        deleted = "SELECT id FROM sessions WHERE tenant_id = ? AND deleted_at IS NOT NULL"
        row = await self._ctx.db.fetch_one(
            "SELECT COUNT(*) AS n FROM sessions WHERE tenant_id = ? AND deleted_at IS NOT NULL", (t,)
        )
        sessions = int(row["n"]) if row else 0
        row = await self._ctx.db.fetch_one(
            f"SELECT COUNT(blob_key) AS n FROM session_events WHERE tenant_id = ? AND session_id IN ({deleted})",
            (t, t),
        )
        blobs = int(row["n"]) if row else 0
        events = 0
        last_id = ""
        while True:
            rows = await self._ctx.db.fetch_all(
                "SELECT s.id AS id, s.retained_from_seq AS retained_from_seq, s.last_seq AS last_seq,"
                " e.created_at AS oldest FROM sessions s JOIN session_events e ON e.tenant_id = s.tenant_id"
                " AND e.session_id = s.id AND e.seq = s.retained_from_seq WHERE s.tenant_id = ? AND s.id > ?"
                " AND s.deleted_at IS NULL ORDER BY s.id LIMIT ?",
                (t, last_id, batch_size),
            )
            for r in rows:
                if int(r["oldest"]) < cut:
                    lo = int(r["retained_from_seq"])
                    upto = await self._first_newer(r["id"], lo, int(r["last_seq"]), cut)
                    found = await self._ctx.db.fetch_one(
                        "SELECT COUNT(*) AS n, COUNT(blob_key) AS b FROM session_events WHERE tenant_id = ?"
                        " AND session_id = ? AND seq >= ? AND seq < ?",
                        (t, r["id"], lo, upto),
                    )
                    if found is not None:
                        events += int(found["n"])
                        blobs += int(found["b"])
            if len(rows) < batch_size:
                break
            last_id = rows[-1]["id"]
        row = await self._ctx.db.fetch_one(
            "SELECT COUNT(*) AS n FROM session_streams WHERE tenant_id = ? AND status <> 'open' AND finished_at < ?"
            f" AND session_id NOT IN ({deleted})",
            (t, cut, t),
        )
        streams = int(row["n"]) if row else 0
        # Settled rows, less the promoted ones whose events the pass prunes (they go with them, uncounted).
        row = await self._ctx.db.fetch_one(
            "SELECT COUNT(*) AS n FROM session_inbox i WHERE i.tenant_id = ? AND i.state <> 'pending'"
            f" AND i.updated_at < ? AND i.session_id NOT IN ({deleted}) AND (i.state <> 'promoted' OR EXISTS"
            " (SELECT 1 FROM session_events e WHERE e.tenant_id = i.tenant_id AND e.session_id = i.session_id"
            " AND e.seq <= i.seq AND e.created_at >= ?))",
            (t, cut, t, cut),
        )
        inbox = int(row["n"]) if row else 0
        row = await self._ctx.db.fetch_one(
            "SELECT COUNT(*) AS n FROM session_inbox i WHERE i.tenant_id = ? AND i.state = 'cancelled'"
            " AND i.updated_at < ? AND i.blob_key IS NOT NULL AND NOT EXISTS (SELECT 1 FROM session_events e"
            " WHERE e.tenant_id = i.tenant_id AND e.session_id = i.session_id AND e.event_id = i.event_id"
            f" AND e.blob_key = i.blob_key) AND i.session_id NOT IN ({deleted})",
            (t, cut, t),
        )
        blobs += int(row["n"]) if row else 0
        return GcReport(events=events, inbox=inbox, streams=streams, sessions=sessions, blobs=blobs)
