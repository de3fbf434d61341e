"""Sandbox provider benchmark: exec through the E2B and Daytona adapters next to the raw SDK call, both
through the same local fake, in the same run.

    python bench/sandbox_providers.py            # 300 execs per variant, medians of 3 runs
    python bench/sandbox_providers.py --quick    # 40 execs, one run (a smoke test)

What is measured (asyncio; the fakes of ``tests/fakes`` serve on loopback in a thread of this process and
run the commands on this machine):

* ``sandbox.exec(cmd)`` through the adapter: the command runs under openma's wrapper (its own session, an
  in-sandbox watchdog that kills the process group at the deadline, stderr split back on Daytona), with the
  adapter's outer deadline, masking and caps;
* the raw SDK call on the same sandbox, through the same fake: E2B ``sbx.commands.run(cmd)``, Daytona
  ``sb.process.exec(cmd)``; no process-tree kill, no deadline that survives a lost client, merged output on
  Daytona.

Variants alternate one call each, so outside load falls on both alike. The ratio is adapter / raw p50. On a
real provider every call also crosses the network (tens of milliseconds), which the wrapper does not add to,
so the ratio there is closer to 1 than here, where the fake answers in a few milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openma.ports.sandbox import SandboxSpec
from openma.settings import Settings
from tests.fakes import daytona_server, e2b_server

COMMANDS = ("true", "echo hello")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(variants: dict[str, Callable[[], Awaitable[None]]], n: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm up
        for _ in range(5):
            await fn()
    order = list(variants.items())
    for i in range(n):
        for name, fn in order[i % 2 :] + order[: i % 2]:
            t = time.perf_counter()
            await fn()
            samples[name].append(time.perf_counter() - t)
    return samples


async def one_run(root: Path, n: int) -> list[tuple[str, str, str, float, float]]:
    from openma.adapters.sandboxes import daytona, e2b

    rows: list[tuple[str, str, str, float, float]] = []
    e2b_fake, e2b_served = e2b_server.serve(root / "e2b")
    day_fake, day_served = daytona_server.serve(root / "daytona")
    try:
        providers: dict[str, Any] = {
            "e2b": await e2b.open_sandbox_provider(
                Settings(e2b_api_key=e2b_fake.API_KEY, e2b_api_url=e2b_served.url, e2b_sandbox_url=e2b_served.url)
            ),
            "daytona": await daytona.open_sandbox_provider(
                Settings(daytona_api_key=day_fake.API_KEY, daytona_api_url=day_served.url + "/api")
            ),
        }
        for name, provider in providers.items():
            box = root / f"{name}-box"
            spec = SandboxSpec(
                tenant_id="ten_bench",
                session_id=f"ses_bench_{name}",
                options={"workdir": str(box / "workspace"), "state_dir": str(box / "state")},
            )
            sandbox = await provider.create(spec)
            try:
                for cmd in COMMANDS:

                    async def adapter(cmd: str = cmd, sandbox: Any = sandbox) -> None:
                        result = await sandbox.exec(cmd)
                        assert result.exit_code == 0, result

                    if name == "e2b":

                        async def raw(cmd: str = cmd, sandbox: Any = sandbox) -> None:
                            result = await sandbox._sbx.commands.run(cmd)
                            assert result.exit_code == 0

                    else:

                        async def raw(cmd: str = cmd, sandbox: Any = sandbox) -> None:
                            result = await sandbox._sb.process.exec(cmd)
                            assert result.exit_code == 0

                    samples = await measure({"raw SDK call": raw, "openma adapter": adapter}, n)
                    for who, s in samples.items():
                        rows.append((name, cmd, who, pct(s, 0.5), pct(s, 0.99)))
            finally:
                await sandbox.destroy()
                await provider.aclose()
    finally:
        e2b_fake.close()
        day_fake.close()
        e2b_served.stop()
        day_served.stop()
    return rows


async def main(args: argparse.Namespace) -> None:
    n, runs = (40, 1) if args.quick else (300, 3)
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="openma-bench-providers-") as tmp:
            results.append(await one_run(Path(tmp), n))
    lat: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for rows in results:
        for provider, cmd, who, p50, p99 in rows:
            lat.setdefault((provider, cmd, who), []).append((p50, p99))
    print(
        f"Sandbox provider benchmark: medians of {runs} run(s); {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {n} execs per variant, through the local fakes"
    )
    print()
    print("| provider | command | contender | p50 ms | p99 ms | p50 vs raw |")
    print("|---|---|---|---:|---:|---:|")
    for provider in ("e2b", "daytona"):
        for cmd in COMMANDS:
            raw50 = statistics.median(p for p, _ in lat[(provider, cmd, "raw SDK call")])
            for who in ("raw SDK call", "openma adapter"):
                vals = lat[(provider, cmd, who)]
                p50 = statistics.median(p for p, _ in vals)
                p99 = statistics.median(q for _, q in vals)
                print(f"| {provider} | `{cmd}` | {who} | {p50:.2f} | {p99:.2f} | {p50 / raw50:.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations, one run")
    asyncio.run(main(parser.parse_args()))
