"""Worker benchmark: turns/s with a scripted model, and the time from ``post`` to the turn starting.

    python bench/workers.py            # 300 sessions per point
    python bench/workers.py --quick    # 60 sessions per point

* ``turns/s``: N sessions get one input each while one in-process ``openma.Worker`` runs (concurrency 1, 8
  and 32); the time from the first post until the runnable index is empty. The scripted model answers at
  once, so this is the worker's own cost (claim, lease, promote, stream, log, clear).
* ``post -> turn start``: the time from ``post`` returning to the session's ``session.status_running`` event
  (its ``created_at``), p50/p99: idle (one post at a time, the worker waiting), and under load (the same
  posts while the other sessions keep the worker busy).

Both engines; the Postgres part starts its own throwaway server and is skipped, with a message, without
server binaries.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import anyio

from openma import Platform, Settings, Worker
from openma.adapters.sql.backend import SqlStoreBackend
from openma.testing import ScriptedModel


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def message(text: str) -> list[dict[str, Any]]:
    return [{"type": "user.message", "content": [{"type": "text", "text": text}]}]


class Endless(ScriptedModel):
    """A scripted model that answers every call at once."""

    def stream(self, request: Any) -> Any:
        self.add([{"type": "text", "text": "ok"}])
        return super().stream(request)


async def sessions(oma: Platform, n: int) -> tuple[Any, list[str]]:
    t = oma.tenant(await oma.tenants.create(name="bench"))
    agent = await t.agents.create(name="a", model="m", tools=[])
    env = await t.environments.create(name="e")
    return t, [(await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id for _ in range(n)]


async def empty(oma: Platform) -> bool:
    backend = oma.backend("sessions")
    assert isinstance(backend, SqlStoreBackend)
    return not await backend.runnable_index().admin_runnable(limit=1)


async def throughput(settings: Settings, n: int, concurrency: int) -> float:
    async with Platform.open(settings) as oma:
        t, sids = await sessions(oma, n)
        async with Worker(oma, model=Endless(), concurrency=concurrency, poll_interval=0.05) as worker:
            start = time.perf_counter()
            for sid in sids:
                await t.sessions.post(sid, message("go"))
            await worker.wait_idle(timeout=600)
            assert await empty(oma)
            return n / (time.perf_counter() - start)


async def started_ms(t: Any, sid: str, posted: datetime) -> float:
    while True:
        page = await t.sessions.events(sid, types=["session.status_running"], order="desc", limit=1)
        if page.items and page.items[0].created_at >= posted:
            return (page.items[0].created_at - posted).total_seconds() * 1000
        await anyio.sleep(0.002)


async def latency(settings: Settings, n: int, *, load: bool) -> list[float]:
    async with Platform.open(settings) as oma:
        t, sids = await sessions(oma, n + (n if load else 0))
        probes, busy = sids[:n], sids[n:]
        out: list[float] = []
        async with Worker(oma, model=Endless(), concurrency=8) as worker:
            for sid in busy:
                await t.sessions.post(sid, message("busy"))
            for sid in probes:
                posted = datetime.now(UTC)
                await t.sessions.post(sid, message("go"))
                out.append(await started_ms(t, sid, posted))
                if not load:
                    await worker.wait_idle()
        return out


async def engine(name: str, settings: Settings, n: int) -> None:
    for c in (1, 8, 32):
        rate = await throughput(settings, n, c)
        print(f"  {name:<8} turns/s concurrency {c:>2}: {rate:8.1f}")
    for load in (False, True):
        values = await latency(settings, max(20, n // 5), load=load)
        label = "under load" if load else "idle"
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        print(f"  {name:<8} post -> turn start {label:<10}: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")


async def main(quick: bool) -> None:
    n = 60 if quick else 300
    print(f"worker benchmark on {os.cpu_count()} cores, {n} sessions per point; load: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        await engine("SQLite", Settings(sqlite_path=f"{tmp}/bench.db", blob_url=f"file://{tmp}/blobs"), n)
        from openma.testing.pgserver import PgServer, PgServerUnavailable

        try:
            server = PgServer.start()
        except PgServerUnavailable as exc:
            print(f"Postgres: skipped ({exc})")
            return
        with server:
            url = server.create_database("bench_workers")
            pg = Settings.from_env(
                {
                    "OPENMA_SQLITE_PATH": f"{tmp}/bench-pg.db",
                    "OPENMA_BLOB_URL": f"file://{tmp}/blobs",
                    "OPENMA_POSTGRES_URL": url,
                    "STORE_BACKENDS": '{"default": "pg"}',
                    "OPENMA_ROOT_SECRET": "bench-root-secret-0123456789",
                }
            )
            await engine("Postgres", pg, n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    anyio.run(main, args.quick)
