"""Concurrent appenders: many sessions, each appending one event at a time, all at once (used by events.py).

Aggregate events/s of ``WRITERS`` tasks, one session each, every task appending one event per call (its next
call only after the previous one returned), next to one task doing the same, and raw-driver baselines
writing the same rows in the same run:

* SQLite: raw ``sqlite3`` through one ``to_thread`` hop per append, one connection per task (what an app
  without a shared writer does: the tasks queue on the database lock, one fsync per append each), and the
  same with a single task.
* Postgres: raw psycopg, the one-statement append (counter + insert), one connection per task; and one task.

openma appends through ``sessions.unfenced_append`` (the write unit an actor's append runs, without the
lease check), on its default pool.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from openma.adapters.sql.migrate import load_migrations
from openma.core.ids import new_id

WRITERS = 32

Append = Callable[[int, int], Awaitable[Any]]  # (writer, i) -> None


async def rate(append: Append, writers: int, per_writer: int) -> float:
    """Aggregate events/s of ``writers`` tasks, each making ``per_writer`` single-event appends in turn."""

    async def one(w: int) -> None:
        for i in range(per_writer):
            await append(w, i)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(writers):
            tg.start_soon(one, w)
    return writers * per_writer / (time.perf_counter() - began)


async def openma_appenders(sessions: Any, new_session: Callable[[], Awaitable[str]], event: Any) -> Append:
    ids = [await new_session() for _ in range(WRITERS)]

    async def append(w: int, i: int) -> None:
        await sessions.unfenced_append(ids[w], [event(i)])

    return append


class RawSqliteAppenders:
    """One connection per writer, each append one ``BEGIN IMMEDIATE`` .. ``COMMIT`` through a thread hop."""

    def __init__(self, path: Path, new_session_sql: str, bump: str, insert: str, tenant: str, row: Any) -> None:
        setup = sqlite3.connect(path)
        for migration in load_migrations("sqlite"):
            setup.executescript(migration.sql)
        setup.close()
        self.conns = []
        for _ in range(WRITERS):
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self.conns.append(conn)
        now = int(time.time() * 1000)
        self.ids = [new_id("ses") for _ in range(WRITERS)]
        for sid in self.ids:
            self.conns[0].execute(new_session_sql, (tenant, sid, now, now))
        self.bump, self.insert, self.tenant, self.row = bump, insert, tenant, row

    def _append(self, w: int, i: int) -> None:
        c, sid = self.conns[w], self.ids[w]
        c.execute("BEGIN IMMEDIATE")
        try:
            last = c.execute(self.bump, (1, self.tenant, sid)).fetchone()[0]
            c.execute(self.insert, (self.tenant, sid, last, *self.row(i)))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    async def append(self, w: int, i: int) -> None:
        await anyio.to_thread.run_sync(self._append, w, i)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


class RawPsycopgAppenders:
    """One connection per writer, each append the one-statement counter bump and insert."""

    def __init__(self, url: str, new_session_sql: str, one_statement: str, tenant: str, row: Any) -> None:
        self.url, self.new_session_sql, self.sql = url, new_session_sql, one_statement
        self.tenant, self.row = tenant, row
        self.conns: list[Any] = []
        self.ids = [new_id("ses") for _ in range(WRITERS)]

    async def setup(self) -> None:
        import psycopg

        now = int(time.time() * 1000)
        for sid in self.ids:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            self.conns.append(conn)
            await conn.execute(self.new_session_sql, (self.tenant, sid, now, now))

    async def append(self, w: int, i: int) -> None:
        sid = self.ids[w]
        await self.conns[w].execute(self.sql, (self.tenant, sid, self.tenant, sid, *self.row(i)))

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


async def measure(variants: dict[str, Append], per_writer: int) -> dict[str, float]:
    """events/s of each variant with ``WRITERS`` tasks and with one, the variants interleaved (two rounds)."""
    out: dict[str, list[float]] = {}
    for round_ in range(2):
        names = list(variants) if round_ == 0 else list(reversed(variants))
        for name in names:
            many = await rate(variants[name], WRITERS, per_writer)
            one = await rate(variants[name], 1, per_writer * 4)
            out.setdefault(f"{name}, {WRITERS} appenders", []).append(many)
            out.setdefault(f"{name}, 1 appender", []).append(one)
    return {k: sum(v) / len(v) for k, v in out.items()}
