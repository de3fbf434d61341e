"""A process that holds or fights for a session's actor, for the fault tests (run with ``python -m``).

Modes:

* ``hold``: acquire, start a turn (status running, an open stream with chunks, an orphan tool use), print
  ``ready <epoch>`` and wait to be killed.
* ``fight SECONDS``: until SECONDS pass, acquire (waiting), append a few events one by one, release; print
  ``A <event id> <epoch>`` for every accepted append and ``R <event id> <epoch>`` for every refused one, as it
  goes, so a killed worker's output still counts.
* ``frozen``: acquire, print ``ready <epoch>``, wait for a line on stdin, try one append, print
  ``accepted`` or ``refused``.
* ``frozen-sandbox``: acquire, write ``owner.txt`` in the session's sandbox and snapshot it, print
  ``ready <epoch>``, wait for a line on stdin, then try exec, write_file, read_file and snapshot on that
  sandbox, printing ``accepted <op>`` or ``refused <op>`` for each.

Settings come from the environment (``Settings.from_env()``), plus ``WORKER_TENANT`` and ``WORKER_SESSION``.
"""

from __future__ import annotations

import os
import random
import sys
import time

import anyio

from openma import LeaseLost, Platform, SessionBusy, Settings
from openma.core.ids import new_id


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def hold(sessions: object, session_id: str) -> None:
    async with sessions.actor(session_id, wait=10) as actor:  # type: ignore[attr-defined]
        await actor.set_status("running")
        stream = await actor.open_stream(message_id="msg_partial")
        await actor.append_stream(stream.id, ["partial ", "answer"])
        await actor.append([{"type": "agent.tool_use", "id": "tu_orphan", "name": "bash", "input": {}}])
        say(f"ready {actor.epoch}")
        await anyio.sleep(3600)


async def fight(sessions: object, session_id: str, seconds: float, name: str) -> None:
    deadline = time.monotonic() + seconds
    rng = random.Random(os.getpid())
    while time.monotonic() < deadline:
        try:
            async with sessions.actor(session_id, wait=1.0) as actor:  # type: ignore[attr-defined]
                for _ in range(rng.randint(1, 15)):
                    event_id = new_id("evt")
                    try:
                        await actor.append(
                            [
                                {
                                    "id": event_id,
                                    "type": "agent.message",
                                    "content": [],
                                    "worker": name,
                                    "epoch": actor.epoch,
                                }
                            ]
                        )
                    except LeaseLost:
                        say(f"R {event_id} {actor.epoch}")
                        break
                    say(f"A {event_id} {actor.epoch}")
                    await anyio.sleep(rng.random() * 0.01)
        except (SessionBusy, LeaseLost):
            continue


async def frozen(sessions: object, session_id: str) -> None:
    async with sessions.actor(session_id, wait=10) as actor:  # type: ignore[attr-defined]
        say(f"ready {actor.epoch}")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        try:
            await actor.append([{"type": "agent.message", "content": [], "from": "frozen"}])
        except LeaseLost:
            say("refused")
        else:
            say("accepted")


async def frozen_sandbox(sessions: object, session_id: str) -> None:
    async with sessions.actor(session_id, wait=10) as actor:  # type: ignore[attr-defined]
        sandbox = await actor.sandbox()
        await sandbox.write_file("owner.txt", b"frozen")
        await sandbox.snapshot()
        say(f"ready {actor.epoch}")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        attempts = {
            "exec": lambda: sandbox.exec("echo stale > owner.txt", timeout=30),
            "write_file": lambda: sandbox.write_file("owner.txt", b"stale"),
            "read_file": lambda: sandbox.read_file("owner.txt"),
            "snapshot": sandbox.snapshot,
        }
        for name, attempt in attempts.items():
            try:
                await attempt()
            except LeaseLost:
                say(f"refused {name}")
            else:
                say(f"accepted {name}")


async def main() -> None:
    mode = sys.argv[1]
    async with Platform.open(Settings.from_env(auto_migrate=False)) as oma:
        sessions = oma.tenant(os.environ["WORKER_TENANT"]).sessions
        session_id = os.environ["WORKER_SESSION"]
        if mode == "hold":
            await hold(sessions, session_id)
        elif mode == "fight":
            await fight(sessions, session_id, float(sys.argv[2]), sys.argv[3])
        elif mode == "frozen":
            await frozen(sessions, session_id)
        elif mode == "frozen-sandbox":
            await frozen_sandbox(sessions, session_id)
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    anyio.run(main)
