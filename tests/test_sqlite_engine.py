"""The SQLite engine: write units, transactions, lock waits, several processes, and a loop that never blocks."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from openma import Platform, Settings, StorageUnavailable
from openma.adapters.sqlite import SqliteClient
from openma.ports.sql import Statement

pytestmark = pytest.mark.anyio

DDL = "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"


async def _client(tmp_path: Path, **kwargs: object) -> SqliteClient:
    client = await SqliteClient.open(str(tmp_path / "e.db"), **kwargs)  # type: ignore[arg-type]
    await client.execute(DDL)
    return client


async def test_batch_is_atomic_and_expect_rows_rolls_back(tmp_path: Path) -> None:
    client = await _client(tmp_path)
    try:
        result = await client.run_batch(
            [
                Statement("INSERT INTO t VALUES ('a', 1)"),
                Statement("UPDATE t SET v = 2 WHERE k = 'missing'", expect_rows=True),
                Statement("INSERT INTO t VALUES ('b', 1)"),
            ]
        )
        assert result.aborted_at == 1 and not result.committed
        assert await client.fetch_all("SELECT * FROM t") == []
        with pytest.raises(sqlite3.IntegrityError) as info:
            await client.run_batch(
                [Statement("INSERT INTO t VALUES ('a', 1)"), Statement("INSERT INTO t VALUES ('a', 2)")]
            )
        assert client.dialect.is_unique_violation(info.value)
        assert await client.fetch_all("SELECT * FROM t") == []
        ok = await client.run_batch([Statement("INSERT INTO t VALUES ('a', 1) RETURNING k, v", fetch=True)])
        assert ok.rows == [[{"k": "a", "v": 1}]] and ok.rowcounts == [1]
    finally:
        await client.aclose()


async def test_transaction_commits_rolls_back_and_survives_cancellation(tmp_path: Path) -> None:
    client = await _client(tmp_path)
    try:
        async with client.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('kept', 1)")
            assert (await tx.fetch_one("SELECT v FROM t WHERE k = 'kept'")) == {"v": 1}
        with pytest.raises(RuntimeError):
            async with client.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES ('lost', 1)")
                raise RuntimeError("boom")
        with anyio.move_on_after(0.05):
            async with client.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES ('cancelled', 1)")
                await anyio.sleep(10)
        rows = await client.fetch_all("SELECT k FROM t ORDER BY k")
        assert rows == [{"k": "kept"}]
        # the writer is free again
        assert await client.execute("INSERT INTO t VALUES ('after', 1)") == 1
    finally:
        await client.aclose()


def _hold_write_lock(path: str, seconds: float, ready: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    ready.set()
    threading.Event().wait(seconds)
    conn.execute("ROLLBACK")
    conn.close()


async def test_waiting_for_the_lock_does_not_block_the_event_loop(tmp_path: Path) -> None:
    client = await _client(tmp_path, busy_timeout_ms=100, lock_timeout=10.0)
    ready = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(client.path, 0.6, ready))
    holder.start()
    ready.wait()
    ticks = 0
    try:
        async with anyio.create_task_group() as tg:

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await anyio.sleep(0.01)

            tg.start_soon(ticker)
            # This write has to wait ~0.6 s for the other connection's lock.
            assert await client.execute("INSERT INTO t VALUES ('waited', 1)") == 1
            tg.cancel_scope.cancel()
        # Had the wait run on the loop thread, the ticker could not have run during it.
        assert ticks >= 10
    finally:
        holder.join()
        await client.aclose()


async def test_lock_timeout_is_a_typed_error_and_writes_nothing(tmp_path: Path) -> None:
    client = await _client(tmp_path, busy_timeout_ms=50, lock_timeout=0.3)
    ready = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(client.path, 1.5, ready))
    holder.start()
    ready.wait()
    try:
        with pytest.raises(StorageUnavailable) as info:
            await client.run_batch([Statement("INSERT INTO t VALUES ('x', 1)")])
        assert info.value.code == "storage_unavailable" and "locked" in str(info.value)
    finally:
        holder.join()
    try:
        assert await client.fetch_all("SELECT * FROM t") == []
        assert await client.execute("INSERT INTO t VALUES ('y', 1)") == 1
    finally:
        await client.aclose()


def _writer_process(path: str, n: int, tenant_id: str, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def main() -> None:
        settings = Settings(sqlite_path=path, sqlite_busy_timeout_ms=20, auto_migrate=False)
        async with Platform.open(settings) as oma:
            agents = oma.tenant(tenant_id).agents
            for i in range(n):
                a = await agents.create(name=f"p{i}", model="m")
                await agents.update(a.id, system="two")

    try:
        anyio.run(main)
    except BaseException as exc:
        errors.put(repr(exc))
        raise


async def test_several_processes_write_one_file_without_database_is_locked(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    async with Platform.open(Settings(sqlite_path=path)) as oma:
        tenant = await oma.tenants.create(name="shared")
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer_process, args=(path, 60, tenant.id, errors)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        await anyio.to_thread.run_sync(p.join, 120)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    async with Platform.open(Settings(sqlite_path=path)) as oma:
        agents = oma.tenant(tenant.id).agents
        seen = 0
        cursor = None
        while True:
            page = await agents.list(limit=500, cursor=cursor)
            seen += len(page)
            assert all(a.version == 2 for a in page)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == 240
