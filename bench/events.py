"""Event log benchmark: openma's sessions store next to raw drivers writing the same rows, in the same run.

    python bench/events.py             # both engines, medians of 3 runs
    python bench/events.py --quick     # fewer operations, one run (a smoke test)

What is measured, for each engine (1 KB events, as in DESIGN section 8):

* **append x1**: one event per transaction. openma: ``t.sessions.unfenced_append(session, [event])`` (one write unit:
  bump the session's counter, insert the row; on Postgres one statement that also notifies listeners).
  Raw, the same rows with the same counter: SQLite ``BEGIN IMMEDIATE`` / ``UPDATE … RETURNING`` / ``INSERT``
  / ``COMMIT`` on the event-loop thread (the floor: the loop blocks on every fsync) and through one
  ``to_thread`` hop per append (the honest async baseline); Postgres one statement doing counter + insert
  (one round trip) and ``BEGIN`` / ``UPDATE`` / ``INSERT`` / ``COMMIT`` (four).
* **append x100**: batches of 100 per transaction (raw: ``executemany`` on SQLite, ``COPY`` on Postgres).
* **append x1, 32 sessions at once**: 32 tasks, one session each, appending one event per call concurrently,
  aggregate events/s, next to one task doing the same (``bench/appenders.py``); raw baselines: a sqlite3
  connection per task through ``to_thread``, a psycopg connection per task with the one-statement append.
* **read 10k**: a 10 000-event session read in order (openma: ``events(after=…, limit=1000)`` pages, payloads
  decoded into ``Event`` objects; raw: one ``SELECT … ORDER BY seq`` with ``json.loads`` per row).
* **tail latency**: append → subscriber, p50/p99, in-process (a ``subscribe`` iterator woken by the writer)
  and across processes (a writer in another process; Postgres LISTEN/NOTIFY with a raw NOTIFY baseline,
  SQLite polling every ``sqlite_poll_interval``).
* **1 MB event**: appending (and reading back) one event of 1 MB, which spills to the blob store (``file://``
  in the run's temporary directory) and keeps a stub row; raw: the same megabyte inserted inline.

Variants run interleaved, in slices (openma, raw, raw, openma, …), so outside load falls on all of them
alike. The Postgres part starts its own throwaway server and is skipped, with a message, without server
binaries. The last column is openma's speed relative to the baseline (throughput ratio, or the inverse ratio
of times): above 1 means openma is faster. Tail latencies run from the start of the append (so they include
its commit) to the subscriber's wake-up.
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
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from openma import Platform, Settings
from openma.adapters.sql.migrate import load_migrations
from openma.core.ids import new_id

sys.path.insert(0, str(Path(__file__).parent))
import appenders as conc

SLICES = 5
TENANT = "tnt_00000000000000000000000000"
BUMP = "UPDATE sessions SET last_seq = last_seq + ? WHERE tenant_id = ? AND id = ? RETURNING last_seq"
INSERT = (
    "INSERT INTO session_events (tenant_id, session_id, seq, event_id, type, data, blob_key, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, NULL, ?)"
)
SELECT = "SELECT seq, event_id, type, data, created_at FROM session_events WHERE tenant_id = ? AND session_id = ?"
NEW_SESSION = (
    "INSERT INTO sessions (tenant_id, id, agent_id, environment_id, agent_snapshot, environment_snapshot, title,"
    " metadata, status, last_seq, retained_from_seq, last_inbox_pos, lease_epoch, created_at, updated_at)"
    " VALUES (?, ?, 'agt_00000000000000000000000000', 'env_00000000000000000000000000', '{}', '{}', NULL, '{}',"
    " 'idle', 0, 1, 0, 0, ?, ?)"
)
TEXT = "The quick brown fox jumps over the lazy dog. " * 22  # ~1 KB of JSON per event

CONCURRENT = f"append x1, {conc.WRITERS} sessions at once (events/s)"

Op = Callable[[int], Awaitable[Any]]


def event(i: int, text: str = TEXT) -> dict[str, Any]:
    return {"type": "agent.message", "content": [{"type": "text", "text": text}], "n": i}


def raw_row(i: int, text: str = TEXT) -> tuple[str, str, str, int]:
    """What a careful app stores per event: a fresh id, the type, the JSON (with its id), the time."""
    event_id = new_id("evt")
    data = json.dumps({**event(i, text), "id": event_id}, separators=(",", ":"), ensure_ascii=False)
    return event_id, "agent.message", data, int(time.time() * 1000)


class Variant:
    def __init__(self, name: str) -> None:
        self.name = name

    async def append1(self, i: int) -> None:
        raise NotImplementedError

    async def append100(self, i: int) -> None:
        raise NotImplementedError

    async def read_all(self) -> int:
        raise NotImplementedError

    async def append_big(self, i: int) -> None:
        raise NotImplementedError

    async def read_big(self) -> None:
        raise NotImplementedError


async def timed(op: Op, start: int, n: int) -> float:
    began = time.perf_counter()
    for i in range(start, start + n):
        await op(i)
    return time.perf_counter() - began


async def interleaved(variants: list[Variant], method: str, n: int) -> dict[str, float]:
    """Operations per second of each variant, in alternating slices after a warm-up."""
    spent = dict.fromkeys((v.name for v in variants), 0.0)
    for v in variants:
        await timed(getattr(v, method), 0, max(5, n // 20))
    per = max(1, n // SLICES)
    for s in range(SLICES):
        for v in variants if s % 2 == 0 else list(reversed(variants)):
            spent[v.name] += await timed(getattr(v, method), 1_000_000 + s * per, per)
    return {name: per * SLICES / t for name, t in spent.items()}


class Results:
    def __init__(self) -> None:
        self.runs: dict[tuple[str, str, str], list[float]] = {}

    def add(self, engine: str, what: str, figures: dict[str, float]) -> None:
        for who, value in figures.items():
            self.runs.setdefault((engine, what, who), []).append(value)

    def median(self, engine: str, what: str, who: str) -> float | None:
        values = self.runs.get((engine, what, who))
        return statistics.median(values) if values else None

    def who(self, engine: str, what: str) -> list[str]:
        return [w for e, x, w in self.runs if (e, x) == (engine, what)]


# ---------------------------------------------------------------------------------------------- openma


class OpenmaVariant(Variant):
    def __init__(self, sessions: Any, session_id: str, big_session: str) -> None:
        super().__init__("openma")
        self.sessions = sessions
        self.session_id = session_id
        self.big_session = big_session
        self.big_text = "x" * (1024 * 1024)

    async def append1(self, i: int) -> None:
        await self.sessions.unfenced_append(self.session_id, [event(i)])

    async def append100(self, i: int) -> None:
        await self.sessions.unfenced_append(self.session_id, [event(i * 100 + k) for k in range(100)])

    async def read_all(self) -> int:
        n, after = 0, self.read_from
        while True:
            page = await self.sessions.events(self.read_session, after=after, limit=1000)
            n += len(page.items)
            if not page.items:
                return n
            after = page.items[-1].seq

    async def append_big(self, i: int) -> None:
        await self.sessions.unfenced_append(self.big_session, [event(i, self.big_text)])

    async def read_big(self) -> None:
        page = await self.sessions.events(self.big_session, order="desc", limit=1)
        assert len(page.items[0].data["content"][0]["text"]) == len(self.big_text)

    read_session = ""
    read_from = 0


async def open_openma(stack: AsyncExitStack, settings: Settings) -> tuple[OpenmaVariant, Any]:
    oma = await stack.enter_async_context(Platform.open(settings))
    t = oma.tenant(await oma.tenants.create(name="bench"))
    agent = await t.agents.create(name="bench", model="m")
    env = await t.environments.create(name="bench")

    async def session() -> str:
        return str((await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id)

    mine = OpenmaVariant(t.sessions, await session(), await session())
    mine.read_session = await session()
    for k in range(10):
        await t.sessions.unfenced_append(mine.read_session, [event(k * 1000 + j) for j in range(1000)])
    return mine, (t, session)


# ---------------------------------------------------------------------------------------------- SQLite


class RawSqlite(Variant):
    def __init__(self, name: str, path: Path, *, hop: bool) -> None:
        super().__init__(name)
        conn = sqlite3.connect(path)
        for migration in load_migrations("sqlite"):
            conn.executescript(migration.sql)
        conn.close()
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.hop = hop
        now = int(time.time() * 1000)
        self.sessions = [new_id("ses") for _ in range(3)]
        for sid in self.sessions:
            self.conn.execute(NEW_SESSION, (TENANT, sid, now, now))
        self.session_id, self.read_session, self.big_session = self.sessions
        self._append(self.read_session, [raw_row(k) for k in range(10_000)])
        self.big_text = "x" * (1024 * 1024)

    def _append(self, session_id: str, rows: list[tuple[str, str, str, int]]) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            last = c.execute(BUMP, (len(rows), TENANT, session_id)).fetchone()[0]
            first = last - len(rows) + 1
            if len(rows) == 1:
                c.execute(INSERT, (TENANT, session_id, first, *rows[0]))
            else:
                c.executemany(INSERT, [(TENANT, session_id, first + k, *r) for k, r in enumerate(rows)])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args) if self.hop else fn(*args)

    async def append1(self, i: int) -> None:
        await self._run(self._append, self.session_id, [raw_row(i)])

    async def append100(self, i: int) -> None:
        await self._run(self._append, self.session_id, [raw_row(i * 100 + k) for k in range(100)])

    def _read(self) -> int:
        rows = self.conn.execute(SELECT + " ORDER BY seq", (TENANT, self.read_session)).fetchall()
        for r in rows:
            json.loads(r[3])
        return len(rows)

    async def read_all(self) -> int:
        return int(await self._run(self._read))

    async def append_big(self, i: int) -> None:
        await self._run(self._append, self.big_session, [raw_row(i, self.big_text)])

    def _read_big(self) -> None:
        row = self.conn.execute(SELECT + " ORDER BY seq DESC LIMIT 1", (TENANT, self.big_session)).fetchone()
        json.loads(row[3])

    async def read_big(self) -> None:
        await self._run(self._read_big)


# ---------------------------------------------------------------------------------------------- Postgres


def pg(sql: str) -> str:
    return sql.replace("?", "%s")


ONE_STATEMENT = (
    "WITH s AS (UPDATE sessions SET last_seq = last_seq + 1 WHERE tenant_id = %s AND id = %s RETURNING last_seq)"
    " INSERT INTO session_events (tenant_id, session_id, seq, event_id, type, data, blob_key, created_at)"
    " SELECT %s, %s, s.last_seq, %s, %s, %s, NULL, %s FROM s"
)


# The same append with the notification openma's one statement sends (listeners wake up on it).
ONE_STATEMENT_NOTIFY = (
    "WITH s AS (UPDATE sessions SET last_seq = last_seq + 1 WHERE tenant_id = %s AND id = %s RETURNING last_seq),"
    " w AS (SELECT pg_notify('bench_events', s.last_seq::text) AS n FROM s)"
    " INSERT INTO session_events (tenant_id, session_id, seq, event_id, type, data, blob_key, created_at)"
    " SELECT %s, %s, s.last_seq, %s, %s, %s, NULL, %s FROM s, w"
)


class RawPsycopg(Variant):
    def __init__(self, name: str, conn: Any, *, one_statement: bool) -> None:
        super().__init__(name)
        self.conn = conn
        self.one_statement = one_statement
        self.big_text = "x" * (1024 * 1024)

    async def setup(self) -> None:
        now = int(time.time() * 1000)
        self.sessions = [new_id("ses") for _ in range(3)]
        for sid in self.sessions:
            await self.conn.execute(pg(NEW_SESSION), (TENANT, sid, now, now))
        self.session_id, self.read_session, self.big_session = self.sessions
        for k in range(10):
            await self._batch(self.read_session, [raw_row(k * 1000 + j) for j in range(1000)])

    async def _one(self, session_id: str, row: tuple[str, str, str, int]) -> None:
        if self.one_statement:
            await self.conn.execute(ONE_STATEMENT, (TENANT, session_id, TENANT, session_id, *row))
            return
        async with self.conn.transaction():
            cur = await self.conn.execute(pg(BUMP), (1, TENANT, session_id))
            last = (await cur.fetchone())[0]
            await self.conn.execute(pg(INSERT), (TENANT, session_id, last, *row))

    async def _batch(self, session_id: str, rows: list[tuple[str, str, str, int]]) -> None:
        async with self.conn.transaction():
            cur = await self.conn.execute(pg(BUMP), (len(rows), TENANT, session_id))
            first = (await cur.fetchone())[0] - len(rows) + 1
            async with self.conn.cursor().copy(
                "COPY session_events (tenant_id, session_id, seq, event_id, type, data, created_at) FROM STDIN"
            ) as copy:
                for k, (eid, etype, data, at) in enumerate(rows):
                    await copy.write_row((TENANT, session_id, first + k, eid, etype, data, at))

    async def append1(self, i: int) -> None:
        await self._one(self.session_id, raw_row(i))

    async def append100(self, i: int) -> None:
        await self._batch(self.session_id, [raw_row(i * 100 + k) for k in range(100)])

    async def read_all(self) -> int:
        cur = await self.conn.execute(pg(SELECT) + " ORDER BY seq", (TENANT, self.read_session))
        rows = await cur.fetchall()
        for r in rows:
            json.loads(r[3])
        return len(rows)

    async def append_big(self, i: int) -> None:
        await self._one(self.big_session, raw_row(i, self.big_text))

    async def read_big(self) -> None:
        cur = await self.conn.execute(pg(SELECT) + " ORDER BY seq DESC LIMIT 1", (TENANT, self.big_session))
        json.loads((await cur.fetchone())[3])


# ---------------------------------------------------------------------------------------------- the measures


async def per_call(variants: list[Variant], method: str, reps: int) -> dict[str, float]:
    """Seconds per call of a no-argument ``method``, interleaved like :func:`interleaved`."""
    spent = dict.fromkeys((v.name for v in variants), 0.0)
    for s in range(reps):
        for v in variants if s % 2 == 0 else list(reversed(variants)):
            began = time.perf_counter()
            await getattr(v, method)()
            spent[v.name] += time.perf_counter() - began
    return {name: t / reps for name, t in spent.items()}


async def throughput(engine: str, results: Results, variants: list[Variant], n1: int, n100: int) -> None:
    results.add(engine, "append x1 (events/s)", await interleaved(variants, "append1", n1))
    batches = await interleaved(variants, "append100", n100)
    results.add(engine, "append x100 (events/s)", {k: v * 100 for k, v in batches.items()})
    for v in variants:
        assert await v.read_all() == 10_000, v.name
    reads = await per_call(variants, "read_all", 4)
    results.add(engine, "read 10k (events/s)", {k: 10_000 / t for k, t in reads.items()})
    for v in variants:
        await v.append_big(0)  # warm-up, and something to read back
    big = await per_call([_Big(v) for v in variants], "append", 6)
    results.add(engine, "append 1 MB (ms)", {k: t * 1000 for k, t in big.items()})
    read_big = await per_call(variants, "read_big", 6)
    results.add(engine, "read 1 MB (ms)", {k: t * 1000 for k, t in read_big.items()})


class _Big(Variant):
    def __init__(self, inner: Variant) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.n = 0

    async def append(self) -> None:
        self.n += 1
        await self.inner.append_big(self.n)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1000, p99 * 1000


async def tail_in_process(sessions: Any, session_id: str, n: int) -> tuple[float, float]:
    """Ping-pong: append one event, wait until the subscriber has it; the latency is append start → delivery."""
    latencies: list[float] = []
    got = anyio.Event()
    sent = 0.0
    last = (await sessions.get(session_id)).last_seq

    async def follow() -> None:
        nonlocal got
        async for _ in sessions.subscribe(session_id, after=last):
            latencies.append(time.perf_counter() - sent)
            got.set()
            if len(latencies) == n:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await anyio.sleep(0.05)
        for i in range(n):
            got = anyio.Event()
            sent = time.perf_counter()
            await sessions.unfenced_append(session_id, [event(i)])
            await got.wait()
    return percentiles(latencies)


WRITER = """
import sys, time, anyio
from openma import Platform, Settings

async def main(settings_json, tenant_id, session_id, n, gap):
    import json
    settings = Settings(**json.loads(settings_json))
    async with Platform.open(settings) as oma:
        t = oma.tenant(tenant_id)
        for i in range(int(n)):
            tick = {"type": "bench.tick", "t": time.clock_gettime(time.CLOCK_MONOTONIC)}
            await t.sessions.unfenced_append(session_id, [tick])
            await anyio.sleep(float(gap))

anyio.run(main, *sys.argv[1:])
"""

RAW_NOTIFIER = """
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
for i in range(int(sys.argv[2])):
    conn.execute("SELECT pg_notify('bench_raw', %s)", (repr(time.clock_gettime(time.CLOCK_MONOTONIC)),))
    time.sleep(float(sys.argv[3]))
"""


async def tail_cross_process(
    sessions: Any, settings: dict[str, Any], tenant_id: str, session_id: str, n: int
) -> tuple[float, float]:
    latencies: list[float] = []
    last = (await sessions.get(session_id)).last_seq
    cmd = [sys.executable, "-c", WRITER, json.dumps(settings), tenant_id, session_id, str(n), "0.01"]
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.run_process, cmd)
        async for e in sessions.subscribe(session_id, after=last):
            latencies.append(time.clock_gettime(time.CLOCK_MONOTONIC) - e.data["t"])
            if len(latencies) == n:
                break
    return percentiles(latencies[5:])  # the first few include the writer's start-up


async def raw_notify_latency(url: str, n: int) -> tuple[float, float]:
    import psycopg

    latencies: list[float] = []
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await conn.execute("LISTEN bench_raw")
        async with await anyio.open_process([sys.executable, "-c", RAW_NOTIFIER, url, str(n), "0.01"]) as proc:
            async for note in conn.notifies():
                latencies.append(time.clock_gettime(time.CLOCK_MONOTONIC) - float(note.payload))
                if len(latencies) == n:
                    break
            await proc.wait()
    finally:
        await conn.close()
    return percentiles(latencies[5:])


async def sqlite_run(results: Results, workdir: Path, n1: int, n100: int, n_tail: int, n_conc: int) -> None:
    settings = Settings(sqlite_path=str(workdir / "openma.db"), blob_url=f"file://{workdir}/blobs")
    async with AsyncExitStack() as stack:
        mine, (t, new_session) = await open_openma(stack, settings)
        variants: list[Variant] = [
            mine,
            RawSqlite("raw sqlite3 on the loop", workdir / "raw-loop.db", hop=False),
            RawSqlite("raw sqlite3 + to_thread", workdir / "raw-thread.db", hop=True),
        ]
        await throughput("sqlite", results, variants, n1, n100)
        raw32 = conc.RawSqliteAppenders(workdir / "raw-32.db", NEW_SESSION, BUMP, INSERT, TENANT, raw_row)
        try:
            appenders = {
                "openma": await conc.openma_appenders(t.sessions, new_session, event),
                "raw sqlite3 + to_thread, a connection each": raw32.append,
            }
            results.add("sqlite", CONCURRENT, await conc.measure(appenders, n_conc))
        finally:
            raw32.close()
        p50, p99 = await tail_in_process(t.sessions, await new_session(), n_tail)
        results.add("sqlite", "tail in-process p50 (ms)", {"openma": p50})
        results.add("sqlite", "tail in-process p99 (ms)", {"openma": p99})
        plain = {"sqlite_path": settings.sqlite_path, "blob_url": settings.blob_url}
        p50, p99 = await tail_cross_process(t.sessions, plain, t.tenant_id, await new_session(), n_tail)
        poll = f"openma (polls every {settings.sqlite_poll_interval * 1000:.0f} ms)"
        results.add("sqlite", "tail cross-process p50 (ms)", {poll: p50})
        results.add("sqlite", "tail cross-process p99 (ms)", {poll: p99})


async def postgres_run(results: Results, url: str, n1: int, n100: int, n_tail: int, workdir: Path, n_conc: int) -> None:
    import psycopg

    settings = Settings(
        postgres_url=url,
        store_backends={"default": "pg"},
        root_secret="bench-root-secret-0123456789",
        blob_url=f"file://{workdir}/pgblobs",
    )
    async with AsyncExitStack() as stack:
        mine, (t, new_session) = await open_openma(stack, settings)
        variants: list[Variant] = [mine]
        for name, one in (("raw psycopg, 1 statement", True), ("raw psycopg, BEGIN..COMMIT", False)):
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            stack.push_async_callback(conn.close)
            raw = RawPsycopg(name, conn, one_statement=one)
            await raw.setup()
            variants.append(raw)
        await throughput("postgres", results, variants, n1, n100)
        raw32 = conc.RawPsycopgAppenders(url, pg(NEW_SESSION), ONE_STATEMENT, TENANT, raw_row)
        notifying = conc.RawPsycopgAppenders(url, pg(NEW_SESSION), ONE_STATEMENT_NOTIFY, TENANT, raw_row)
        try:
            await raw32.setup()
            await notifying.setup()
            appenders = {
                "openma": await conc.openma_appenders(t.sessions, new_session, event),
                "raw psycopg, 1 statement, a connection each": raw32.append,
                "raw psycopg, 1 statement with pg_notify, a connection each": notifying.append,
            }
            results.add("postgres", CONCURRENT, await conc.measure(appenders, n_conc))
        finally:
            await raw32.close()
            await notifying.close()
        p50, p99 = await tail_in_process(t.sessions, await new_session(), n_tail)
        results.add("postgres", "tail in-process p50 (ms)", {"openma": p50})
        results.add("postgres", "tail in-process p99 (ms)", {"openma": p99})
        backend = t._platform.backend("sessions")
        backend._wakeups.start()
        assert await backend._wakeups.listener.wait_listening(10)
        plain = {
            "postgres_url": url,
            "store_backends": {"default": "pg"},
            "blob_url": settings.blob_url,
            "root_secret": settings.root_secret,
        }
        p50, p99 = await tail_cross_process(t.sessions, plain, t.tenant_id, await new_session(), n_tail)
        r50, r99 = await raw_notify_latency(url, n_tail)
        results.add("postgres", "tail cross-process p50 (ms)", {"openma (LISTEN/NOTIFY)": p50, "raw NOTIFY": r50})
        results.add("postgres", "tail cross-process p99 (ms)", {"openma (LISTEN/NOTIFY)": p99, "raw NOTIFY": r99})


def report(results: Results, runs: int, n1: int, n100: int, pg_note: str | None) -> str:
    lines = [
        f"Event log benchmark: medians of {runs} run(s); {n1} single appends and {n100} batches of 100 per"
        f" variant per run; 1 KB events; {os.cpu_count()} cores, Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL)",
        "",
        "| engine | measure | openma | baseline | baseline figure | openma speed / baseline |",
        "|---|---|---:|---|---:|---:|",
    ]
    order = [
        "append x1 (events/s)",
        "append x100 (events/s)",
        CONCURRENT,
        "read 10k (events/s)",
        "append 1 MB (ms)",
        "read 1 MB (ms)",
        "tail in-process p50 (ms)",
        "tail in-process p99 (ms)",
        "tail cross-process p50 (ms)",
        "tail cross-process p99 (ms)",
    ]
    for engine in ("sqlite", "postgres"):
        for what in order:
            names = results.who(engine, what)
            if not names:
                continue
            mine_name = next((n for n in names if n.startswith("openma")), names[0])
            mine = results.median(engine, what, mine_name)
            assert mine is not None
            shown = f"{mine:,.0f}" if mine >= 100 else f"{mine:.2f}"
            others = [n for n in names if n != mine_name]
            label = what if mine_name == "openma" else f"{what}, {mine_name}"
            if not others:
                lines.append(f"| {engine} | {label} | {shown} | | | |")
            for other in others:
                theirs = results.median(engine, what, other)
                assert theirs is not None
                tshown = f"{theirs:,.0f}" if theirs >= 100 else f"{theirs:.2f}"
                ratio = theirs / mine if "(ms)" in what else mine / theirs  # above 1: openma is faster
                lines.append(f"| {engine} | {label} | {shown} | {other} | {tshown} | {ratio:.2f} |")
    if pg_note:
        lines += ["", pg_note]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    runs = 1 if args.quick else args.runs
    n1 = 200 if args.quick else args.appends
    n100 = 10 if args.quick else args.batches
    n_tail = 50 if args.quick else args.tail
    n_conc = 5 if args.quick else args.concurrent
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
                await sqlite_run(results, Path(tmp), n1, n100, n_tail, n_conc)
                if server is not None:
                    server.create_database(f"events{run}")
                    await postgres_run(results, server.url(f"events{run}"), n1, n100, n_tail, Path(tmp), n_conc)
            print(f"run {run + 1}/{runs} done ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    print(report(results, runs, n1, n100, pg_note))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--tail", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=40, help="appends per task, 32 concurrent tasks")
    parser.add_argument("--quick", action="store_true", help="one short run")
    parser.add_argument("--no-postgres", action="store_true")
    anyio.run(main, parser.parse_args(), backend="asyncio")
