"""Memory of following a long session: ``subscribe(after=0)`` over a 100 000-event session, peak RSS rise.

    python bench/follow_memory.py                 # 100 000 events of 1 KB, SQLite
    python bench/follow_memory.py --events 20000  # smaller

The session is filled first (appends of 1 000), then the process's RSS is sampled every 5 ms while one
``subscribe`` iterator reads every event from ``after=0`` (and drops it). The figure is the peak RSS during
the follow minus the RSS just before it: a tail that buffers a page at a time keeps it near a few pages of
events (a few MB), whatever the length of the session.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import anyio
import psutil

from openma import Platform, Settings

TEXT = "The quick brown fox jumps over the lazy dog. " * 22  # ~1 KB of JSON per event


def event(i: int) -> dict[str, Any]:
    return {"type": "agent.message", "content": [{"type": "text", "text": TEXT}], "n": i}


async def main(args: argparse.Namespace) -> None:
    proc = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="openma-follow-") as tmp:
        settings = Settings(sqlite_path=f"{tmp}/follow.db", blob_url=f"file://{tmp}/blobs")
        async with Platform.open(settings) as oma:
            t = oma.tenant(await oma.tenants.create(name="follow"))
            agent = await t.agents.create(name="follow", model="claude-sonnet-4-6")
            env = await t.environments.create(name="follow")
            sid = (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id
            for k in range(0, args.events, 1000):
                await t.sessions.unfenced_append(sid, [event(k + j) for j in range(min(1000, args.events - k))])
            before = proc.memory_info().rss
            peak = before
            done = anyio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, proc.memory_info().rss)
                    await anyio.sleep(0.005)

            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                seen = 0
                tail = t.sessions.subscribe(sid, after=0)
                async for ev in tail:
                    seen += 1
                    if ev.seq == args.events:
                        break
                done.set()
            spent = time.perf_counter() - began
            assert seen == args.events
    print(
        f"followed {seen:,} events of 1 KB from after=0 in {spent:.1f} s ({seen / spent:,.0f} events/s):"
        f" RSS before {before / 2**20:.1f} MiB, peak rise {(peak - before) / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    anyio.run(main, parser.parse_args(), backend="asyncio")
