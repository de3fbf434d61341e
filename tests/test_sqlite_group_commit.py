"""SQLite group commit: units queued behind a busy writer share one transaction, each keeping its own outcome."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from openma.adapters import sqlite_group
from openma.adapters.sqlite import SqliteClient
from openma.ports.sql import BatchResult, Statement

pytestmark = pytest.mark.anyio


async def _client(tmp_path: Path) -> SqliteClient:
    client = await SqliteClient.open(str(tmp_path / "g.db"))
    await client.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    await client.execute("INSERT INTO t VALUES ('taken', 0)")
    return client


def _unit(k: str) -> list[Statement]:
    return [Statement("INSERT INTO t VALUES (?, 1) RETURNING k", (k,), fetch=True)]


async def test_concurrent_units_are_committed_together_and_keep_their_own_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await _client(tmp_path)
    groups: list[int] = []
    real = sqlite_group.run_group

    def counting(c, units, begin, alone):  # type: ignore[no-untyped-def]
        groups.append(len(units))
        return real(c, units, begin, alone)

    monkeypatch.setattr("openma.adapters.sqlite.run_group", counting)
    outcomes: dict[str, object] = {}

    async def one(k: str, statements: list[Statement]) -> None:
        try:
            outcomes[k] = await client.run_batch(statements)
        except Exception as exc:
            outcomes[k] = exc

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, f"k{i}", _unit(f"k{i}"))
            tg.start_soon(one, "dup", _unit("taken"))  # a unique violation: this unit alone fails
            tg.start_soon(  # an expect_rows abort: this unit alone is rolled back
                one,
                "abort",
                [
                    Statement("INSERT INTO t VALUES ('aborted', 1)"),
                    Statement("UPDATE t SET v = 9 WHERE k = 'missing'", expect_rows=True),
                ],
            )
        assert max(groups) > 1, groups  # some units did share a commit
        assert sum(groups) == 42
        for i in range(40):
            result = outcomes[f"k{i}"]
            assert isinstance(result, BatchResult) and result.committed
            assert result.rows == [[{"k": f"k{i}"}]]
        assert isinstance(outcomes["dup"], sqlite3.IntegrityError)
        aborted = outcomes["abort"]
        assert isinstance(aborted, BatchResult) and aborted.aborted_at == 1
        rows = await client.fetch_all("SELECT k FROM t ORDER BY k")
        assert {r["k"] for r in rows} == {"taken", *(f"k{i}" for i in range(40))}
    finally:
        await client.aclose()
    # Everything acknowledged is in the file, read by a fresh connection.
    with sqlite3.connect(tmp_path / "g.db") as raw:
        assert raw.execute("SELECT count(*) FROM t").fetchone() == (41,)


def test_a_group_whose_transaction_is_lost_runs_each_unit_alone(tmp_path: Path) -> None:
    c = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    c.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    alone_runs: list[int] = []

    def alone(statements: list[Statement]) -> BatchResult:
        alone_runs.append(len(statements))
        c.execute("BEGIN IMMEDIATE")
        result = sqlite_group.run_unit(c, statements)
        c.execute("COMMIT" if result.committed and c.in_transaction else "ROLLBACK")
        return result

    # The second unit ends the transaction itself (as an error that is not confined to a statement would):
    # nothing of the group stands, so both units run again alone and each gets its own outcome.
    units = [[Statement("INSERT INTO t VALUES ('a')")], [Statement("ROLLBACK"), Statement("SELECT 1 / 0 + x")]]
    out = sqlite_group.run_group(c, units, lambda: c.execute("BEGIN IMMEDIATE"), alone)
    assert alone_runs == [1, 2]
    assert isinstance(out[0], BatchResult) and out[0].committed
    assert isinstance(out[1], sqlite3.Error)
    assert c.execute("SELECT k FROM t").fetchall() == [("a",)]
    c.close()


async def test_a_cancelled_lone_unit_frees_the_writer_at_once_and_still_runs_whole_first(tmp_path: Path) -> None:
    """A unit alone on the writer runs unshielded: its caller can be cancelled while the unit waits in the
    writer thread, and the writer lock is free for the next caller at once; the thread still runs the cancelled
    caller's unit to its end, before the next caller's."""
    client = await _client(tmp_path)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:  # occupies the writer thread until the test lets go
        holding.set()
        release.wait(30)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._writer.worker.call, hold)
            assert await anyio.to_thread.run_sync(holding.wait, 30)
            scope = anyio.CancelScope()

            async def cancelled() -> None:
                with scope:
                    await client.run_batch(_unit("first"))

            tg.start_soon(cancelled)
            with anyio.fail_after(10):
                while not client._write_lock.locked():  # the unit is submitted to the (busy) writer thread
                    await anyio.lowlevel.checkpoint()
                scope.cancel()
                while client._write_lock.locked():  # free at once, while the thread still holds on
                    await anyio.lowlevel.checkpoint()
            assert not release.is_set()
            second: list[BatchResult] = []

            async def after() -> None:
                second.append(await client.run_batch(_unit("second")))

            tg.start_soon(after)
            release.set()
        assert second and second[0].committed
        rows = await client.fetch_all("SELECT k FROM t ORDER BY rowid")
        assert [r["k"] for r in rows] == ["taken", "first", "second"]
    finally:
        release.set()
        await client.aclose()
