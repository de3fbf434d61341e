"""Keyset-paginated ``SELECT`` for the SQL stores, and the SQL text of keyset pagination.

The cursor format and the limits are the core's (:mod:`openma.core.pagination`); the SQL that starts a page
after a cursor's key (:func:`keyset_clause`) and orders it (:func:`order_by`) lives here, with the stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from openma.core import validate
from openma.core.pagination import (
    Keyset,
    check_limit,
    check_order,
    decode_cursor,
    encode_cursor,
    scope_of,
    split_page,
)
from openma.models import Order, Page
from openma.ports.sql import Row, SqlExecutor

T = TypeVar("T")


def keyset_clause(order: Order, column_created: str = "created_at", column_id: str = "id") -> str:
    """The SQL condition that starts a page after a keyset (three placeholders: created_at, created_at, id)."""
    op = ">" if order == "asc" else "<"
    return f"({column_created} {op} ? OR ({column_created} = ? AND {column_id} {op} ?))"


def order_by(order: Order, column_created: str = "created_at", column_id: str = "id") -> str:
    """The ``ORDER BY`` clause of a keyset-paginated list in ``order``."""
    direction = "ASC" if order == "asc" else "DESC"
    return f"ORDER BY {column_created} {direction}, {column_id} {direction}"


def created_between(
    where: list[str], params: list[Any], created_after: object, created_before: object
) -> tuple[int | None, int | None]:
    """Add ``created_after`` (inclusive) and ``created_before`` (exclusive) filters; return them in ms."""
    after = validate.time_bound(created_after, "created_after")
    before = validate.time_bound(created_before, "created_before")
    if after is not None:
        where.append("created_at >= ?")
        params.append(after)
    if before is not None:
        where.append("created_at < ?")
        params.append(before)
    return after, before


async def list_page(
    db: SqlExecutor,
    *,
    table: str,
    where: list[str],
    params: list[Any],
    scope: tuple[Any, ...],
    cursor: str | None,
    order: Order,
    limit: int,
    to_model: Callable[[Row], T],
    key_columns: tuple[str, str] = ("created_at", "id"),
) -> Page[T]:
    """Fetch one page of ``table`` ordered by ``key_columns``, ``limit + 1`` rows to know if there is more."""
    limit = check_limit(limit)
    order = check_order(order)
    fingerprint = scope_of(table, order, *scope)
    where = list(where)
    params = list(params)
    first, second = key_columns
    if cursor is not None:
        key = decode_cursor(cursor, fingerprint)
        where.append(keyset_clause(order, first, second))
        params += [key.created_at, key.created_at, key.id]
    sql = f"SELECT * FROM {table} WHERE {' AND '.join(where)} {order_by(order, first, second)} LIMIT ?"
    params.append(limit + 1)
    rows = await db.fetch_all(sql, params)
    page, more = split_page(rows, limit)
    next_cursor = None
    if more:
        last = page[-1]
        next_cursor = encode_cursor(fingerprint, Keyset(int(last[first]), str(last[second])))
    return Page([to_model(r) for r in page], next_cursor)
