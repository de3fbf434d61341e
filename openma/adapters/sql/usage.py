"""The usage ledger on the SQL family (contract: :mod:`openma.ports.usage`).

* ``record`` is one write unit: it bumps the tenant's position counter by the number of slices, then inserts
  each slice at its position with ``ON CONFLICT (tenant_id, key) DO NOTHING``. The counter row is locked by
  the bump until the unit commits, so a tenant's positions commit in increasing order and the export, a
  keyset on ``pos``, never skips a slice that commits late. A duplicate leaves a gap in the positions,
  never a second row.
* ``summary`` is one ``GROUP BY kind, name`` over ``(tenant_id, at)`` (or ``(tenant_id, session_id, at)``).
* ``export`` reads ``pos > cursor`` in order; ``ack`` moves the consumer's row forward only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from openma.core import validate
from openma.core.clock import Clock, SystemClock, ms_to_datetime
from openma.core.ids import check_id
from openma.core.pagination import check_limit
from openma.core.usage import check_consumer, check_slices, decode_export_cursor, encode_export_cursor
from openma.errors import InvalidInput
from openma.ports.sql import Row, SqlClient, Statement
from openma.ports.tenancy import TenantRef
from openma.ports.usage import ExportedSlice, UsageExport, UsageSlice, UsageSummary, UsageTotal

MAX_EXPORT: Final = 1000
_COLUMNS: Final = (
    "key, pos, session_id, kind, name, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
    " duration_ms, at, recorded_at"
)
_INSERT: Final = (
    "INSERT INTO usage_slices (tenant_id, key, pos, session_id, kind, name, input_tokens, output_tokens,"
    " cache_read_tokens, cache_write_tokens, duration_ms, at, recorded_at)"
    " SELECT ?, ?, last_pos - ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM usage_counters WHERE tenant_id = ?"
    " ON CONFLICT (tenant_id, key) DO NOTHING"
)


def _slice(row: Row) -> UsageSlice:
    return UsageSlice(
        key=row["key"],
        session_id=row["session_id"],
        kind=row["kind"],
        at=ms_to_datetime(int(row["at"])),
        name=row["name"],
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        cache_read_tokens=int(row["cache_read_tokens"]),
        cache_write_tokens=int(row["cache_write_tokens"]),
        duration_ms=int(row["duration_ms"]),
    )


class SqlUsageStore:
    """A tenant's usage ledger on one :class:`~openma.ports.sql.SqlClient`."""

    def __init__(self, client: SqlClient, tenant: TenantRef, clock: Clock | None = None) -> None:
        self._db = client
        self._tenant = tenant
        self.tenant_id = tenant.tenant_id
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"SqlUsageStore(tenant_id={self.tenant_id!r})"

    async def record(self, slices: Sequence[UsageSlice]) -> int:
        checked = check_slices(slices)
        if not checked:
            return 0
        await self._tenant.ensure()
        now = self._clock.now_ms()
        count = len(checked)
        statements = [
            Statement(
                "INSERT INTO usage_counters (tenant_id, last_pos) VALUES (?, ?) ON CONFLICT (tenant_id)"
                " DO UPDATE SET last_pos = usage_counters.last_pos + excluded.last_pos",
                (self.tenant_id, count),
            )
        ]
        for index, item in enumerate(checked):
            params: list[Any] = [self.tenant_id, item.key, count - 1 - index, item.session_id, item.kind, item.name]
            params += [item.input_tokens, item.output_tokens, item.cache_read_tokens, item.cache_write_tokens]
            params += [item.duration_ms, validate.time_bound(item.at, "at"), now, self.tenant_id]
            statements.append(Statement(_INSERT, params))
        result = await self._db.run_batch(statements)
        return sum(result.rowcounts[1:])

    async def summary(
        self, *, since: datetime | None = None, until: datetime | None = None, session_id: str | None = None
    ) -> UsageSummary:
        low = validate.time_bound(since, "since")
        high = validate.time_bound(until, "until")
        where: list[str] = ["tenant_id = ?"]
        params: list[Any] = [self.tenant_id]
        if session_id is not None:
            check_id(session_id, "ses", what="session_id")
            where.append("session_id = ?")
            params.append(session_id)
        if low is not None:
            where.append("at >= ?")
            params.append(low)
        if high is not None:
            where.append("at < ?")
            params.append(high)
        rows = await self._db.fetch_all(
            "SELECT kind, name, COUNT(*) AS slices, SUM(input_tokens) AS input_tokens,"
            " SUM(output_tokens) AS output_tokens, SUM(cache_read_tokens) AS cache_read_tokens,"
            " SUM(cache_write_tokens) AS cache_write_tokens, SUM(duration_ms) AS duration_ms"
            f" FROM usage_slices WHERE {' AND '.join(where)} GROUP BY kind, name",
            params,
        )
        totals = [
            UsageTotal(
                kind=r["kind"],
                name=r["name"],
                slices=int(r["slices"]),
                input_tokens=int(r["input_tokens"]),
                output_tokens=int(r["output_tokens"]),
                cache_read_tokens=int(r["cache_read_tokens"]),
                cache_write_tokens=int(r["cache_write_tokens"]),
                duration_ms=int(r["duration_ms"]),
            )
            for r in rows
        ]
        totals.sort(key=lambda t: (t.kind, t.name))
        return UsageSummary(totals, since=since, until=until, session_id=session_id)

    async def _acked(self, consumer: str) -> int:
        row = await self._db.fetch_one(
            "SELECT pos FROM usage_acks WHERE tenant_id = ? AND consumer = ?", (self.tenant_id, consumer)
        )
        return int(row["pos"]) if row is not None else 0

    async def export(self, *, cursor: str | None = None, limit: int = 100, consumer: str = "default") -> UsageExport:
        consumer = check_consumer(consumer)
        limit = check_limit(limit, maximum=MAX_EXPORT)
        start = decode_export_cursor(self.tenant_id, cursor) if cursor is not None else await self._acked(consumer)
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM usage_slices WHERE tenant_id = ? AND pos > ? ORDER BY pos LIMIT ?",
            (self.tenant_id, start, limit + 1),
        )
        page = rows[:limit]
        items = [ExportedSlice(_slice(r), ms_to_datetime(int(r["recorded_at"]))) for r in page]
        last = int(page[-1]["pos"]) if page else start
        return UsageExport(items, encode_export_cursor(self.tenant_id, last), has_more=len(rows) > limit)

    async def ack(self, cursor: str, *, consumer: str = "default") -> None:
        consumer = check_consumer(consumer)
        pos = decode_export_cursor(self.tenant_id, cursor)
        row = await self._db.fetch_one("SELECT last_pos FROM usage_counters WHERE tenant_id = ?", (self.tenant_id,))
        if pos > (int(row["last_pos"]) if row is not None else 0):
            raise InvalidInput("cursor is past the end of this tenant's usage export", field="cursor")
        await self._tenant.ensure()
        await self._db.execute(
            "INSERT INTO usage_acks (tenant_id, consumer, pos, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant_id, consumer) DO UPDATE SET pos = excluded.pos, updated_at = excluded.updated_at"
            " WHERE usage_acks.pos < excluded.pos",
            (self.tenant_id, consumer, pos, self._clock.now_ms()),
        )
