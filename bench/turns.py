"""Turn-loop benchmark: the loop's own overhead per step, and the time from an interrupt to idle.

    python bench/turns.py            # medians of 3 runs
    python bench/turns.py --quick    # fewer turns, one run
    python bench/turns.py --engine sqlite   # one engine (sqlite | postgres | both, the default)

* ``overhead/step`` (SQLite, and Postgres when its server binaries are found): turns with a scripted model
  (no generation time) that asks for ``bash true`` on every step but the last. For a pair of turns of 5 and
  25 steps, ((wall - the tools' own time, from ``tool.call`` telemetry) of the long one - the same of the
  short one) / 20: what the loop adds per step on top of the model and the tool (log writes, the stream
  row, the conversation), without what a turn costs once. Target ≤ 2 ms p50.
* ``interrupt→idle``: a ``user.interrupt`` posted while ``sleep 30`` runs as a tool; the time until ``run``
  returned with the session idle. Target ≤ 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from openma import Platform, Settings
from openma.adapters.telemetry import MemoryTelemetry
from openma.testing import ScriptedModel

STEPS = 25
SHORT = 5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _script(steps: int) -> list[Any]:
    true = [{"type": "tool_use", "id": f"t{i}", "name": "bash", "input": {"command": "true"}} for i in range(steps)]
    return [[use] for use in true[: steps - 1]] + [[{"type": "text", "text": "done"}]]


async def _setup(oma: Platform) -> tuple[Any, str]:
    t = oma.tenant(await oma.tenants.create(name="bench"))
    agent = await t.agents.create(name="a", model="m", tools=[{"type": "agent_toolset_20260401"}])
    env = await t.environments.create(name="e")
    return t, (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id


async def _turn(t: Any, sid: str, steps: int, telemetry: MemoryTelemetry) -> float:
    """Milliseconds of one ``steps``-step turn, less its tools' own time."""
    await t.sessions.post(sid, [{"type": "user.message", "content": [{"type": "text", "text": "go"}]}])
    telemetry.records.clear()
    started = time.perf_counter()
    result = await t.sessions.run(sid, model=ScriptedModel(_script(steps)), max_steps=steps)
    wall = time.perf_counter() - started
    assert result.stop_reason == "end_turn", result.stop_reason
    return (wall - sum(r["duration_ms"] for r in telemetry.of("tool.call")) / 1000) * 1000


async def overhead(settings: Settings, turns: int) -> list[float]:
    """Per-step overhead, from pairs of turns of ``SHORT`` and ``STEPS`` steps: the difference over the extra
    steps leaves out what a turn costs once (acquiring the actor, reading the log, the idle snapshot)."""
    telemetry = MemoryTelemetry()
    out = []
    async with Platform.open(settings, telemetry=telemetry) as oma:
        t, sid = await _setup(oma)
        await _turn(t, sid, SHORT, telemetry)  # warms the sandbox
        for _ in range(turns):
            short = await _turn(t, sid, SHORT, telemetry)
            long = await _turn(t, sid, STEPS, telemetry)
            out.append((long - short) / (STEPS - SHORT))
    return out


async def interrupt_to_idle(settings: Settings) -> float:
    async with Platform.open(settings) as oma:
        t, sid = await _setup(oma)
        await t.sessions.post(sid, [{"type": "user.message", "content": [{"type": "text", "text": "wait"}]}])
        use = {"type": "tool_use", "id": "s", "name": "bash", "input": {"command": "sleep 30"}}
        done = anyio.Event()

        async def run() -> None:
            await t.sessions.run(sid, model=ScriptedModel([[use]]))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            async with t.sessions.subscribe(sid) as tail:
                async for event in tail:
                    if event.type == "agent.tool_use":
                        break
            await anyio.sleep(0.3)  # let the sleep start in the sandbox
            started = time.perf_counter()
            await t.sessions.post(sid, [{"type": "user.interrupt"}])
            await done.wait()
            elapsed = time.perf_counter() - started
        assert (await t.sessions.get(sid)).status == "idle"
        return elapsed


def _settings(root: Path, pg_url: str | None) -> Settings:
    common: dict[str, Any] = {
        "sqlite_path": str(root / "db.sqlite"),
        "blob_url": f"file://{root}/blobs",
        "local_sandbox_root": str(root / "sandboxes"),
    }
    if pg_url:
        return Settings(
            **common, postgres_url=pg_url, store_backends={"default": "pg"}, root_secret="bench-root-secret-0123456789"
        )
    return Settings(**common)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    runs, turns = (1, 5) if args.quick else (3, 15)
    engines: list[tuple[str, str | None]] = [("sqlite", None)] if args.engine != "postgres" else []
    server = None
    try:
        from openma.testing.pgserver import PgServer, find_bindir

        if args.engine != "sqlite" and find_bindir() is not None:
            server = PgServer.start()
            engines.append(("postgres", server.create_database("bench_turns")))
    except Exception as exc:  # the SQLite figures still count
        print(f"postgres skipped: {exc}", file=sys.stderr)
    try:
        for engine, url in engines:
            p50s, p99s, idles = [], [], []
            for _ in range(runs):
                with tempfile.TemporaryDirectory() as tmp:
                    values = anyio.run(overhead, _settings(Path(tmp), url), turns)
                    p50s.append(pct(values, 0.5))
                    p99s.append(pct(values, 0.99))
                with tempfile.TemporaryDirectory() as tmp:
                    idles.append(anyio.run(interrupt_to_idle, _settings(Path(tmp), url)) * 1000)
            print(
                f"{engine:<9} overhead/step p50 {statistics.median(p50s):.2f} ms  p99 {statistics.median(p99s):.2f} ms"
                f"   interrupt→idle {statistics.median(idles):.0f} ms"
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
