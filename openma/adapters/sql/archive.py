"""Soft-delete shared by the tenant-owned tables: set ``archived_at`` once and return the row."""

from __future__ import annotations

from openma.ports.sql import Row, SqlClient, Statement


async def archive_row(
    db: SqlClient, table: str, *, tenant_id: str, row_id: str, now: int, extra_where: str = ""
) -> Row | None:
    """Archive one row (idempotent: the first ``archived_at`` is kept); ``None`` when there is no such row."""
    result = await db.run_batch(
        [
            Statement(
                f"UPDATE {table} SET archived_at = COALESCE(archived_at, ?), updated_at = ?"
                f" WHERE tenant_id = ? AND id = ?{extra_where} RETURNING *",
                (now, now, tenant_id, row_id),
                fetch=True,
                expect_rows=True,
            )
        ]
    )
    return result.rows[0][0] if result.committed else None
