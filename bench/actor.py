"""SessionActor benchmark: acquire+release latency on both engines, and the Postgres hand-over time.

    python bench/actor.py            # medians of 3 runs
    python bench/actor.py --quick    # fewer iterations, one run

* ``acquire+release``: ``async with t.sessions.actor(sid)`` around nothing, sequentially, on SQLite (a
  ``flock`` file and one write unit) and on Postgres (a new lease connection with an advisory lock, one write
  unit, and a clean release). p50/p99 in milliseconds.
* ``hand-over`` (Postgres): a holder process is killed with SIGKILL mid-turn; the time from the kill to the
  first write of the next holder (in this process), which includes acquiring and running recovery. Target:
  under one second.

The Postgres part starts its own throwaway server and is skipped, with a message, without server binaries.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from openma import Platform, Settings

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def new_session(settings: Settings) -> tuple[str, str]:
    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="bench")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="a", model="m")
        env = await t.environments.create(name="e")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        return tenant.id, session.id


async def acquire_release(settings: Settings, n: int) -> list[float]:
    tenant, session = await new_session(settings)
    async with Platform.open(settings) as oma:
        sessions = oma.tenant(tenant).sessions
        async with sessions.actor(session):  # warm-up
            pass
        times = []
        for _ in range(n):
            started = time.perf_counter()
            async with sessions.actor(session):
                pass
            times.append((time.perf_counter() - started) * 1000)
        return times


async def hand_over(settings: Settings, env: dict[str, str]) -> float:
    tenant, session = await new_session(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.actor_worker", "hold"],
        cwd=ROOT,
        env={**os.environ, **env, "WORKER_TENANT": tenant, "WORKER_SESSION": session},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("ready")
    async with Platform.open(settings) as oma:
        sessions = oma.tenant(tenant).sessions
        await sessions.get(session)  # connections warm
        killed = time.perf_counter()
        proc.send_signal(signal.SIGKILL)
        async with sessions.actor(session, wait=10) as actor:
            await actor.append([{"type": "agent.message", "content": []}])
            took = (time.perf_counter() - killed) * 1000
    proc.wait()
    return took


def line(name: str, values: list[float]) -> str:
    return f"  {name:<34} p50 {pct(values, 0.5):8.2f} ms   p99 {pct(values, 0.99):8.2f} ms   (n={len(values)})"


async def main(quick: bool) -> None:
    n = 50 if quick else 300
    runs = 1 if quick else 3
    print(f"actor benchmark on {os.cpu_count()} cores, {runs} run(s) of {n} acquire+release each")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = Settings(sqlite_path=f"{tmp}/bench.db", blob_url=f"file://{tmp}/blobs")
        medians = [await acquire_release(sqlite, n) for _ in range(runs)]
        best = min(medians, key=lambda v: statistics.median(v))
        print("SQLite (flock + epoch row)")
        print(line("acquire+release", best))
        try:
            from openma.testing.pgserver import PgServer, PgServerUnavailable
        except ImportError as exc:  # pragma: no cover
            print(f"Postgres: skipped ({exc})")
            return
        try:
            server = PgServer.start()
        except PgServerUnavailable as exc:
            print(f"Postgres: skipped ({exc})")
            return
        with server:
            url = server.create_database("bench_actor")
            env = {
                "OPENMA_SQLITE_PATH": f"{tmp}/bench-pg.db",
                "OPENMA_BLOB_URL": f"file://{tmp}/blobs",
                "OPENMA_POSTGRES_URL": url,
                "STORE_BACKENDS": '{"default": "cf", "sessions": "pg"}',
                "OPENMA_ROOT_SECRET": "bench-root-secret-0123456789",
            }
            pg = Settings.from_env(env)
            medians = [await acquire_release(pg, n) for _ in range(runs)]
            best = min(medians, key=lambda v: statistics.median(v))
            print("Postgres (advisory lock on a dedicated connection + epoch row)")
            print(line("acquire+release", best))
            handovers = [await hand_over(pg, env) for _ in range(3 if quick else 5)]
            print(
                f"  {'hand-over after SIGKILL':<34} median {statistics.median(handovers):8.1f} ms"
                f"   max {max(handovers):8.1f} ms   (target < 1000 ms; n={len(handovers)})"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    anyio.run(main, args.quick)
