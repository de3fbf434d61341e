"""Write units on one SQLite connection: one unit alone, or several queued units in one transaction.

Group commit: with ``synchronous=FULL`` every ``COMMIT`` waits for an fsync, which costs far more than the
statements of a small unit. Units that queued up while the writer was busy are run together, each inside its
own savepoint, and committed once: one fsync for all of them. Nothing is acknowledged before that commit
returns, so durability is what it is for a unit alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from openma.ports.sql import BatchResult, Row, Statement


def rows_of(cursor: sqlite3.Cursor) -> list[Row]:
    """Every row of ``cursor`` as a dict; the column names are read once per statement, not once per row."""
    got = cursor.fetchall()
    if not got:
        return []
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in got]


def run_unit(c: sqlite3.Connection, statements: Sequence[Statement]) -> BatchResult:
    """Run a unit's statements in the open transaction; stop at the first ``expect_rows`` that found none.

    The caller commits or rolls back (a result that is not ``committed`` must be rolled back).
    """
    rowcounts: list[int] = []
    rows: list[list[Row]] = []
    for index, st in enumerate(statements):
        cur = c.execute(st.sql, st.params)
        if st.fetch:
            got = rows_of(cur)
            count = len(got)
        else:
            got, count = [], cur.rowcount
        rowcounts.append(count)
        rows.append(got)
        if st.expect_rows and count == 0:
            return BatchResult(rowcounts, rows, aborted_at=index)
    return BatchResult(rowcounts, rows)


class _GroupLost(Exception):
    """SQLite dropped a group's whole transaction: its units are run again one by one."""


def run_group(
    c: sqlite3.Connection,
    units: Sequence[Sequence[Statement]],
    begin: Callable[[], None],
    alone: Callable[[Sequence[Statement]], BatchResult],
) -> list[BatchResult | BaseException]:
    """Several write units in one transaction (one commit, one fsync), each inside its own savepoint.

    ``begin`` opens the write transaction; ``alone`` runs one unit in a transaction of its own. A unit that
    aborts (``expect_rows``) or raises is rolled back to its savepoint alone and the others go on; its
    outcome (the aborted result, or the exception) is returned in its place, in the order of ``units``. When
    SQLite drops the whole transaction (an error not confined to one statement) or the commit fails, nothing
    of the group was written: every unit is then run again alone, so each gets the outcome it would have had
    without the group. A single unit is simply run alone.
    """
    if len(units) == 1:
        return [_outcome(alone, units[0])]
    begin()
    out: list[BatchResult | BaseException] = []
    try:
        for statements in units:
            c.execute("SAVEPOINT unit")
            try:
                result = run_unit(c, statements)
            except Exception as exc:
                if not c.in_transaction:
                    raise _GroupLost from exc
                c.execute("ROLLBACK TO unit")
                c.execute("RELEASE unit")
                out.append(exc)
                continue
            if not result.committed:
                c.execute("ROLLBACK TO unit")
            c.execute("RELEASE unit")
            out.append(result)
        c.execute("COMMIT")
    except Exception:
        if c.in_transaction:
            c.execute("ROLLBACK")
        return [_outcome(alone, statements) for statements in units]
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise
    return out


def _outcome(
    alone: Callable[[Sequence[Statement]], BatchResult], statements: Sequence[Statement]
) -> BatchResult | BaseException:
    try:
        return alone(statements)
    except Exception as exc:
        return exc
