"""Growth benchmark: do appends and reads stay flat as the event log grows to a million events?

    python bench/growth.py            # 1 000 000 events over 10 000 sessions, on SQLite and Postgres
    python bench/growth.py --quick    # 20 000 events over 200 sessions (a smoke test)
    python bench/growth.py --no-postgres

The store is filled session by session, 100 events per session in one append each (1 KB events). Twice,
at 1 % of the fill (10 000 events) and when it is full, it measures, on sessions already filled:

* **append p50**: one single-event ``unfenced_append`` to a random filled session (the per-call latency);
* **read-a-page p50**: ``events(session, after=<random>, limit=100)`` of a random filled session;

and at the end the database size per event (SQLite: the file and its WAL, which checkpoints keep under a few
MB; Postgres: ``pg_database_size``) and
the time of a ``gc`` whose cutoff removes the older half of the events. The target is that both p50s at the
full size stay within 1.5x of their values at 1 %.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from openma import Platform, Settings

PER_SESSION = 100
SAMPLES = 300
TEXT = "The quick brown fox jumps over the lazy dog. " * 22  # ~1 KB of JSON per event


def event(i: int) -> dict[str, Any]:
    return {"type": "agent.message", "content": [{"type": "text", "text": TEXT}], "n": i}


async def p50s(t: Any, filled: list[str], samples: int) -> tuple[float, float]:
    """Median append and page-read latency (ms) over random filled sessions."""
    rng = random.Random(7)
    appends, reads = [], []
    for i in range(-samples // 5, samples):  # the first fifth warms up (prepared statements, caches)
        sid = rng.choice(filled)
        began = time.perf_counter()
        await t.sessions.unfenced_append(sid, [event(i)])
        spent = time.perf_counter() - began
        sid = rng.choice(filled)
        after = rng.randrange(0, PER_SESSION - 10)
        began = time.perf_counter()
        page = await t.sessions.events(sid, after=after, limit=100)
        if i >= 0:
            appends.append(spent)
            reads.append(time.perf_counter() - began)
        assert page.items and page.items[0].seq == after + 1
    return statistics.median(appends) * 1000, statistics.median(reads) * 1000


async def run(engine: str, settings: Settings, sessions: int, size: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    async with AsyncExitStack() as stack:
        oma = await stack.enter_async_context(Platform.open(settings))
        t = oma.tenant(await oma.tenants.create(name="growth"))
        agent = await t.agents.create(name="growth", model="claude-sonnet-4-6")
        env = await t.environments.create(name="growth")
        filled: list[str] = []
        checkpoint = max(1, sessions // 100)
        half_at: datetime | None = None
        began = time.perf_counter()
        for k in range(sessions):
            sid = (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id
            await t.sessions.unfenced_append(sid, [event(k * PER_SESSION + j) for j in range(PER_SESSION)])
            filled.append(sid)
            if k + 1 == checkpoint:
                out["append p50 ms @1%"], out["read page p50 ms @1%"] = await p50s(t, filled, SAMPLES)
            if k + 1 == sessions // 2:
                await anyio.sleep(0.002)  # a clean time boundary between the halves
                half_at = datetime.now(UTC)
                await anyio.sleep(0.002)
            if (k + 1) % max(1, sessions // 10) == 0:
                spent = time.perf_counter() - began
                print(f"{engine}: {k + 1}/{sessions} sessions filled ({spent:.0f} s)", file=sys.stderr)
        out["fill events/s"] = sessions * PER_SESSION / (time.perf_counter() - began)
        out["append p50 ms @full"], out["read page p50 ms @full"] = await p50s(t, filled, SAMPLES)
        total = sessions * PER_SESSION + 2 * (SAMPLES + SAMPLES // 5)
        out["bytes per event"] = await size(oma) / total
        assert half_at is not None
        began = time.perf_counter()
        report = await t.sessions.gc(half_at)
        out["gc of half (s)"] = time.perf_counter() - began
        out["gc removed events"] = float(report.events)
    return out


def sqlite_size(path: Path) -> Any:
    async def size(oma: Any) -> int:
        files = (path, Path(f"{path}-wal"))
        return sum(p.stat().st_size for p in files if p.exists())

    return size


def pg_size(url: str) -> Any:
    async def size(oma: Any) -> int:
        import psycopg

        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT pg_database_size(current_database())")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    return size


def report(results: dict[str, dict[str, float]], sessions: int) -> str:
    lines = [
        f"Growth: {sessions * PER_SESSION:,} events over {sessions:,} sessions ({PER_SESSION} per session, 1 KB"
        f" each), p50 of {SAMPLES} calls; {os.cpu_count()} cores",
        "",
        "| engine | append p50 @1% | @full | ratio | read-a-page p50 @1% | @full | ratio | bytes/event | gc half |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for engine, r in results.items():
        a0, a1 = r["append p50 ms @1%"], r["append p50 ms @full"]
        r0, r1 = r["read page p50 ms @1%"], r["read page p50 ms @full"]
        lines.append(
            f"| {engine} | {a0:.2f} ms | {a1:.2f} ms | {a1 / a0:.2f} | {r0:.2f} ms | {r1:.2f} ms | {r1 / r0:.2f}"
            f" | {r['bytes per event']:,.0f} | {r['gc of half (s)']:.1f} s ({r['gc removed events']:,.0f} events) |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    sessions = 200 if args.quick else args.sessions
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="openma-growth-") as tmp:
        path = Path(tmp) / "growth.db"
        settings = Settings(sqlite_path=str(path), blob_url=f"file://{tmp}/blobs")
        results["sqlite"] = await run("sqlite", settings, sessions, sqlite_size(path))
        if not args.no_postgres:
            from openma.testing.pgserver import PgServer, PgServerUnavailable

            try:
                server = PgServer.start()
            except PgServerUnavailable as exc:
                print(f"Postgres skipped: {exc}", file=sys.stderr)
            else:
                try:
                    server.create_database("growth")
                    url = server.url("growth")
                    pg = Settings(
                        postgres_url=url,
                        store_backends={"default": "pg"},
                        root_secret="bench-root-secret-0123456789",
                        blob_url=f"file://{tmp}/pgblobs",
                    )
                    results["postgres"] = await run("postgres", pg, sessions, pg_size(url))
                finally:
                    server.stop()
    print(report(results, sessions))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions of 100 events each")
    parser.add_argument("--quick", action="store_true", help="200 sessions (20 000 events)")
    parser.add_argument("--no-postgres", action="store_true")
    anyio.run(main, parser.parse_args(), backend="asyncio")
