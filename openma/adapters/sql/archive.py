"""Soft-delete shared by the entity tables: set ``archived_at`` once and return the row."""

from __future__ import annotations

from openma.ports.sql import Row, SqlClient, Statement


async def archive_row(
    db: SqlClient,
    table: str,
    *,
    tenant_id: str | None,
    row_id: str,
    now: int,
    extra_where: str = "",
    touch: bool = True,
) -> Row | None:
    """Archive one row (idempotent: the first ``archived_at`` is kept); ``None`` when there is no such row.

    ``tenant_id`` is ``None`` for a table whose rows belong to no tenant; ``touch`` also sets ``updated_at``.
    """
    sets = "archived_at = COALESCE(archived_at, ?)" + (", updated_at = ?" if touch else "")
    key = ("tenant_id = ? AND id = ?", (tenant_id, row_id)) if tenant_id is not None else ("id = ?", (row_id,))
    result = await db.run_batch(
        [
            Statement(
                f"UPDATE {table} SET {sets} WHERE {key[0]}{extra_where} RETURNING *",
                (now, *((now,) if touch else ()), *key[1]),
                fetch=True,
                expect_rows=True,
            )
        ]
    )
    return result.rows[0][0] if result.committed else None
