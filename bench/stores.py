"""Stores benchmark: openma's agent create/get next to raw drivers doing the same statements, in the same run.

    python bench/stores.py             # both engines, medians of 3 runs
    python bench/stores.py --quick     # fewer operations, one run (a smoke test)

For each engine, ``create`` is ``agents.create`` through the public facade (one write unit: an ``agents`` row
and an ``agent_versions`` row) and ``get`` is ``agents.get`` (a primary-key read, JSON decoded). The raw
baselines run the same SQL with the same JSON work, written the way a careful hand-written app would:

* SQLite, same pragmas (WAL, ``synchronous=FULL``): ``BEGIN IMMEDIATE``, two ``INSERT``, ``COMMIT``;
  (a) on the event-loop thread (the floor: no async at all, the loop blocks on every fsync), and
  (b) through one ``anyio.to_thread.run_sync`` hop per operation (the honest async baseline).
* Postgres, one connection: (a) the same statements in one pipeline (one round trip, as openma sends them),
  and (b) ``async with conn.transaction()`` around the two inserts (four round trips).
* ``get x32``: 32 tasks reading at once (raw: one connection per worker thread on SQLite, a pool of the same
  size as openma's on Postgres).

Variants are measured interleaved, in slices (openma, raw, raw, openma, ...), so that load from elsewhere on
the machine falls on all of them alike; a run's figure is a variant's operations over its summed time.

The Postgres part starts its own throwaway server (``openma.testing.pgserver``) and is skipped, with a
message, when no server binaries are installed. Ratios are openma / raw: above 1 means openma is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from openma import Platform, Settings
from openma.adapters.sql.migrate import load_migrations
from openma.core.ids import new_id

INSERT_AGENT = (
    "INSERT INTO agents (tenant_id, id, name, name_search, model_id, version, config,"
    " created_at, updated_at, archived_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, NULL)"
)
INSERT_VERSION = (
    "INSERT INTO agent_versions (tenant_id, agent_id, version, snapshot, created_at) VALUES (?, ?, 1, ?, ?)"
)
SELECT_AGENT = "SELECT * FROM agents WHERE tenant_id = ? AND id = ?"
TENANT = "tnt_00000000000000000000000000"
CONCURRENCY = 32
SLICES = 5

Op = Callable[[int], Awaitable[Any]]


def agent_rows(i: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The two rows of one agent, built as an app would: a fresh id, the config and snapshot as JSON."""
    now = int(time.time() * 1000)
    agent_id = new_id("agt", now_ms=now)
    name = f"agent-{i}"
    config = {
        "model": "claude-sonnet-4-6",
        "system": "You are terse.",
        "description": "",
        "tools": [],
        "mcp_servers": [],
        "skills": [],
        "metadata": {},
    }
    agent = (TENANT, agent_id, name, name.casefold(), config["model"], json.dumps(config), now, now)
    version = (TENANT, agent_id, json.dumps({"name": name, **config, "version": 1}), now)
    return agent, version


class Variant:
    """One contender: how it creates an agent, gets one, and gets many at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ids: list[str] = []

    async def create(self, i: int) -> None:
        raise NotImplementedError

    async def get(self, i: int) -> None:
        raise NotImplementedError

    async def get_many(self, i: int) -> None:
        """A get run by one of 32 concurrent tasks (defaults to :meth:`get`)."""
        await self.get(i)

    def next_id(self, i: int) -> str:
        return self.ids[i % len(self.ids)]


async def run_ops(op: Op, start: int, n: int, concurrency: int) -> float:
    """Seconds taken by ``n`` calls of ``op`` (numbered from ``start``) spread over ``concurrency`` tasks."""
    began = time.perf_counter()
    if concurrency == 1:
        for i in range(start, start + n):
            await op(i)
    else:

        async def worker(first: int) -> None:
            for i in range(first, start + n, concurrency):
                await op(i)

        async with anyio.create_task_group() as tg:
            for w in range(concurrency):
                tg.start_soon(worker, start + w)
    return time.perf_counter() - began


async def interleaved(variants: list[Variant], method: str, n: int, concurrency: int = 1) -> dict[str, float]:
    """Operations per second of each variant, measured in alternating slices after a warm-up."""
    spent = dict.fromkeys((v.name for v in variants), 0.0)
    for v in variants:
        await run_ops(getattr(v, method), 0, max(20, n // 20), concurrency)
    per_slice = max(1, n // SLICES)
    for s in range(SLICES):
        order = variants if s % 2 == 0 else list(reversed(variants))
        for v in order:
            spent[v.name] += await run_ops(getattr(v, method), 10_000 + s * per_slice, per_slice, concurrency)
    return {name: per_slice * SLICES / t for name, t in spent.items()}


class Results:
    def __init__(self) -> None:
        self.runs: dict[tuple[str, str, str], list[float]] = {}

    def add(self, engine: str, op: str, figures: dict[str, float]) -> None:
        for who, value in figures.items():
            self.runs.setdefault((engine, op, who), []).append(value)

    def median(self, engine: str, op: str, who: str) -> float:
        return statistics.median(self.runs[(engine, op, who)])


class OpenmaVariant(Variant):
    """openma's public facade on one tenant."""

    def __init__(self, agents: Any) -> None:
        super().__init__("openma")
        self.agents = agents

    async def create(self, i: int) -> None:
        agent = await self.agents.create(name=f"agent-{i}", model="claude-sonnet-4-6", system="You are terse.")
        self.ids.append(agent.id)

    async def get(self, i: int) -> None:
        await self.agents.get(self.next_id(i))


async def open_openma(stack: AsyncExitStack, settings: Settings) -> OpenmaVariant:
    oma = await stack.enter_async_context(Platform.open(settings))
    tenant = await oma.tenants.create(name="bench")
    return OpenmaVariant(oma.tenant(tenant.id).agents)


# -- SQLite


def raw_sqlite_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class RawSqlite(Variant):
    def __init__(self, name: str, path: Path, *, hop: bool) -> None:
        super().__init__(name)
        conn = sqlite3.connect(path)
        for migration in load_migrations("sqlite"):
            conn.executescript(migration.sql)
        conn.close()
        self.path = path
        self.conn = raw_sqlite_connect(path)
        self.hop = hop
        self.local = threading.local()

    def _create(self, i: int) -> None:
        agent, version = agent_rows(i)
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(INSERT_AGENT, agent)
            c.execute(INSERT_VERSION, version)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self.ids.append(str(agent[1]))

    @staticmethod
    def _get(conn: sqlite3.Connection, agent_id: str) -> Any:
        row = conn.execute(SELECT_AGENT, (TENANT, agent_id)).fetchone()
        return json.loads(row[6])

    def _get_threaded(self, agent_id: str) -> Any:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = raw_sqlite_connect(self.path)
        return self._get(conn, agent_id)

    async def create(self, i: int) -> None:
        if self.hop:
            await anyio.to_thread.run_sync(self._create, i)
        else:
            self._create(i)

    async def get(self, i: int) -> None:
        if self.hop:
            await anyio.to_thread.run_sync(self._get, self.conn, self.next_id(i))
        else:
            self._get(self.conn, self.next_id(i))

    async def get_many(self, i: int) -> None:
        await anyio.to_thread.run_sync(self._get_threaded, self.next_id(i))


async def sqlite_run(results: Results, workdir: Path, n_create: int, n_get: int) -> None:
    async with AsyncExitStack() as stack:
        settings = Settings(sqlite_path=str(workdir / "openma.db"), blob_url=f"file://{workdir}/blobs")
        variants: list[Variant] = [
            await open_openma(stack, settings),
            RawSqlite("raw loop", workdir / "raw-loop.db", hop=False),
            RawSqlite("raw to_thread", workdir / "raw-thread.db", hop=True),
        ]
        results.add("sqlite", "create", await interleaved(variants, "create", n_create))
        results.add("sqlite", "get", await interleaved(variants, "get", n_get))
        many = [v for v in variants if v.name != "raw loop"]  # one thread cannot serve 32 tasks at once
        results.add("sqlite", "get x32", await interleaved(many, "get_many", n_get, concurrency=CONCURRENCY))


# -- Postgres


def pg(sql: str) -> str:
    return sql.replace("?", "%s")


class RawPsycopg(Variant):
    def __init__(self, name: str, conn: Any, pool: Any, *, pipeline: bool) -> None:
        super().__init__(name)
        self.conn = conn
        self.pool = pool
        self.pipeline = pipeline

    async def create(self, i: int) -> None:
        agent, version = agent_rows(i)
        conn = self.conn
        if self.pipeline:
            async with conn.pipeline():
                await conn.execute("BEGIN", ())
                await conn.execute(pg(INSERT_AGENT), agent)
                await conn.execute(pg(INSERT_VERSION), version)
                await conn.execute("COMMIT", ())
        else:
            async with conn.transaction():
                await conn.execute(pg(INSERT_AGENT), agent)
                await conn.execute(pg(INSERT_VERSION), version)
        self.ids.append(str(agent[1]))

    async def get(self, i: int) -> None:
        cur = await self.conn.execute(pg(SELECT_AGENT), (TENANT, self.next_id(i)))
        row = await cur.fetchone()
        json.loads(row[6])

    async def get_many(self, i: int) -> None:
        async with self.pool.connection() as c:
            cur = await c.execute(pg(SELECT_AGENT), (TENANT, self.next_id(i)))
            row = await cur.fetchone()
            json.loads(row[6])


async def postgres_run(results: Results, url: str, n_create: int, n_get: int) -> None:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    async with AsyncExitStack() as stack:
        settings = Settings(
            postgres_url=url,
            store_backends={"default": "pg"},
            root_secret="bench-root-secret-0123456789",
            pg_pool_max_size=10,
        )
        mine = await open_openma(stack, settings)
        variants: list[Variant] = [mine]
        for name, pipeline in (("raw pipeline", True), ("raw transaction", False)):
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            stack.push_async_callback(conn.close)
            variants.append(RawPsycopg(name, conn, None, pipeline=pipeline))
        results.add("postgres", "create", await interleaved(variants, "create", n_create))
        raw = variants[1]
        raw.name = "raw"
        results.add("postgres", "get", await interleaved([mine, raw], "get", n_get))
        pool = AsyncConnectionPool(url, min_size=10, max_size=10, kwargs={"autocommit": True}, open=False)
        await pool.open(wait=True)
        stack.push_async_callback(pool.close)
        assert isinstance(raw, RawPsycopg)
        raw.pool = pool
        results.add("postgres", "get x32", await interleaved([mine, raw], "get_many", n_get, concurrency=CONCURRENCY))


# -- report


def report(results: Results, runs: int, n_create: int, n_get: int, pg_note: str | None) -> str:
    lines = [
        f"Stores benchmark: medians of {runs} run(s); {n_create} creates, {n_get} gets per run;"
        f" {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        "",
        "| engine | operation | openma ops/s | baseline | baseline ops/s | openma / baseline |",
        "|---|---|---:|---|---:|---:|",
    ]
    for engine in ("sqlite", "postgres"):
        for op in ("create", "get", "get x32"):
            if (engine, op, "openma") not in results.runs:
                continue
            mine = results.median(engine, op, "openma")
            for e, o, who in results.runs:
                if (e, o) == (engine, op) and who != "openma":
                    theirs = results.median(engine, op, who)
                    lines.append(f"| {engine} | {op} | {mine:,.0f} | {who} | {theirs:,.0f} | {mine / theirs:.2f} |")
    if pg_note:
        lines += ["", pg_note]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    runs = 1 if args.quick else args.runs
    n_create = 100 if args.quick else args.creates
    n_get = 500 if args.quick else args.gets
    results = Results()
    server = None
    pg_note = None
    if args.no_postgres:
        pg_note = "Postgres skipped (--no-postgres)."
    else:
        from openma.testing.pgserver import PgServer, PgServerUnavailable

        try:
            server = PgServer.start()
        except PgServerUnavailable as exc:
            pg_note = f"Postgres skipped: {exc}"
    started = time.monotonic()
    try:
        for run in range(runs):
            with tempfile.TemporaryDirectory(prefix="openma-bench-") as tmp:
                await sqlite_run(results, Path(tmp), n_create, n_get)
            if server is not None:
                server.create_database(f"bench{run}")
                await postgres_run(results, server.url(f"bench{run}"), n_create, n_get)
            print(f"run {run + 1}/{runs} done ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    print(report(results, runs, n_create, n_get, pg_note))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--creates", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="one short run")
    parser.add_argument("--no-postgres", action="store_true")
    anyio.run(main, parser.parse_args(), backend="asyncio")
