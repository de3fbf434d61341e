"""The insert of a write unit's new rows below a bumped counter: the portable form and SQLite's, row for row.

``SqlEngine.rows_below_counter`` (a join of the session row with a ``VALUES`` table) and the SQLite engine's
override (a plain multi-row ``VALUES`` whose position reads the counter through a subquery, numbered
parameters) must store the same rows for any count, any tail and any values, in a table shared with other
sessions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from openma.adapters.locks.flock import FlockLeaseLock
from openma.adapters.sql.engine import SqlEngine
from openma.adapters.sqlite_engine import SqliteEngine
from openma.ports.sql import Statement


class _Portable(SqlEngine):
    """The base engine's defaults (a third-party engine that overrides nothing)."""

    migrations = SqliteEngine.migrations

    def lease_lock(self, telemetry: Any) -> Any:
        return FlockLeaseLock("/nonexistent")


class _Client:
    path = ":memory:"


SESSIONS = "CREATE TABLE sessions (tenant_id TEXT, id TEXT, n INTEGER NOT NULL, PRIMARY KEY (tenant_id, id))"
ROWS = (
    "CREATE TABLE r (tenant_id TEXT NOT NULL, session_id TEXT NOT NULL, pos INTEGER NOT NULL, a, b, c, d,"
    " t0, t1, t2, t3, PRIMARY KEY (tenant_id, session_id, pos))"
)
OTHERS = [("tnt_a", "ses_a"), ("tnt_a", "ses_c"), ("tnt_b", "ses_b")]

values = st.one_of(st.none(), st.integers(-(2**62), 2**62), st.text(max_size=20), st.binary(max_size=8))


def _store(engine: SqlEngine, count: int, start: int, rows: Sequence[tuple[Any, ...]], tail: Sequence[Any]) -> list:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(SESSIONS)
    conn.execute(ROWS)
    for k, (tenant, session) in enumerate(OTHERS):
        conn.execute("INSERT INTO sessions VALUES (?, ?, ?)", (tenant, session, start + 1000 * k))
    conn.execute("UPDATE sessions SET n = n + ? WHERE tenant_id = 'tnt_a' AND id = 'ses_c'", (count,))
    flat = [v for k, row in enumerate(rows, 1) for v in (k, *row)]
    columns = ", ".join(["tenant_id, session_id, pos, a, b, c, d", *[f"t{k}" for k in range(len(tail))]])
    statement = engine.rows_below_counter(
        head=f"INSERT INTO r ({columns})",
        counter="n",
        tenant_id="tnt_a",
        session_id="ses_c",
        count=count,
        rows=flat,
        tail=tail,
    )
    assert isinstance(statement, Statement) and not statement.fetch
    conn.execute(statement.sql, statement.params)
    got = conn.execute("SELECT * FROM r ORDER BY tenant_id, session_id, pos").fetchall()
    conn.close()
    return got


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(values, values, values, values), min_size=1, max_size=40),
    tail=st.lists(values, max_size=4),
    start=st.integers(0, 2**40),
)
def test_both_forms_store_the_rows_at_the_positions_below_the_counter(
    rows: list[tuple[Any, ...]], tail: list[Any], start: int
) -> None:
    count = len(rows)
    portable = _store(_Portable(_Client()), count, start, rows, tail)  # type: ignore[arg-type]
    sqlite = _store(SqliteEngine(_Client()), count, start, rows, tail)  # type: ignore[arg-type]
    first = start + 1000 + 1  # the counter of ("tnt_a", "ses_c") before the bump, plus one
    pad = [None] * (4 - len(tail))
    assert portable == [("tnt_a", "ses_c", first + k, *row, *tail, *pad) for k, row in enumerate(rows)]
    assert sqlite == portable


def test_the_sqlite_form_is_a_plain_values_insert_with_numbered_parameters() -> None:
    statement = SqliteEngine(_Client()).rows_below_counter(  # type: ignore[arg-type]
        head="INSERT INTO r (tenant_id, session_id, pos, a, b, c, d, t0)",
        counter="n",
        tenant_id="t",
        session_id="s",
        count=2,
        rows=[1, "a", "b", "c", "d", 2, "e", "f", "g", "h"],
        tail=[7],
    )
    position = "(SELECT n FROM sessions WHERE tenant_id = ?1 AND id = ?2) - ?3"
    assert statement.sql == (
        "INSERT INTO r (tenant_id, session_id, pos, a, b, c, d, t0) VALUES"
        f" (?1, ?2, {position} + ?5, ?6, ?7, ?8, ?9, ?4), (?1, ?2, {position} + ?10, ?11, ?12, ?13, ?14, ?4)"
    )
    assert statement.params == ["t", "s", 2, 7, 1, "a", "b", "c", "d", 2, "e", "f", "g", "h"]
