"""The other process of :class:`openma.testing.ActorContract`'s two-process tests (``python -m`` this module).

Usage: ``python -m openma.testing._actor_worker TARGET ARGUMENT TENANT SESSION MODE [MODE ARGS]``, where
``TARGET`` (``"package.module:function"``) and ``ARGUMENT`` are the adapter's
:class:`~openma.testing.actor.BackendFactory`: ``await function(ARGUMENT)`` opens the backend in this process.
Every line it prints is flushed at once, so the test can follow it step by step:

* ``hold NAME``: acquire the actor, append ``NAME 1``, print ``ready <epoch>``; wait for a line on stdin,
  then try every kind of write and print ``accepted`` or ``refused`` (``LeaseLost``) for each; release.
* ``usurp NAME``: try the actor once (print ``busy`` on ``SessionBusy``), then take the lease the way a new
  holder does once it has the lock (as after the first holder's lock was lost), print ``took <epoch>``,
  append ``NAME 1`` fenced by that epoch and print ``appended <seq>``.
* ``rounds NAME N K``: N times, acquire the actor (waiting), append ``K`` events one by one and release;
  print ``round <epoch> <event ids...>`` after each round.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

from openma.adapters.telemetry import MemoryTelemetry
from openma.core.actor import acquire_actor
from openma.core.ids import new_id
from openma.errors import LeaseLost, SessionBusy
from openma.ports.backend import StoreBackend
from openma.ports.sessions import SessionStore
from openma.testing.stores import _StoreContractBase


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def message(text: str, **extra: Any) -> dict[str, Any]:
    return {"id": new_id("evt"), "type": "user.message", "content": [{"type": "text", "text": text}], **extra}


async def _write_outcome(write: Callable[[], Awaitable[Any]]) -> str:
    try:
        await write()
    except LeaseLost:
        return "refused"
    return "accepted"


async def hold(store: SessionStore, lock: Any, session_id: str, name: str) -> None:
    async with acquire_actor(store, lock, session_id, wait=30, telemetry=MemoryTelemetry()) as actor:
        await actor.append([message(f"{name} 1", epoch=actor.epoch)])
        stream = await actor.open_stream(message_id="msg_hold")
        say(f"ready {actor.epoch}")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        writes: list[Callable[[], Awaitable[Any]]] = [
            lambda: actor.append([message(f"{name} 2", epoch=actor.epoch)]),
            lambda: actor.set_status("running"),
            lambda: actor.promote(),
            lambda: actor.append_stream(stream.id, ["late"]),
            lambda: actor.open_stream(),
        ]
        for write in writes:
            say(await _write_outcome(write))


async def usurp(store: SessionStore, lock: Any, session_id: str, name: str) -> None:
    try:
        async with acquire_actor(store, lock, session_id, wait=0, telemetry=MemoryTelemetry()):
            say("acquired")
    except SessionBusy:
        say("busy")
    grant = await store.take_lease(session_id, name)
    say(f"took {grant.epoch}")
    [event] = await store.append(session_id, [message(f"{name} 1", epoch=grant.epoch)], fence=grant.epoch)
    say(f"appended {event.seq}")


async def rounds(store: SessionStore, lock: Any, session_id: str, name: str, count: int, per_round: int) -> None:
    for _ in range(count):
        async with acquire_actor(store, lock, session_id, wait=60, telemetry=MemoryTelemetry()) as actor:
            ids = []
            for i in range(per_round):
                event = message(f"{name} {i}", epoch=actor.epoch)
                await actor.append([event])
                ids.append(event["id"])
                await anyio.lowlevel.checkpoint()
            say(f"round {actor.epoch} {' '.join(ids)}")


async def main(argv: list[str]) -> None:
    target, argument, tenant_id, session_id, mode, *rest = argv
    module, _, function = target.partition(":")
    opener: Callable[[str], Awaitable[StoreBackend]] = getattr(importlib.import_module(module), function)
    backend = await opener(argument)
    try:
        store = backend.sessions(_StoreContractBase.ref(backend, tenant_id))
        lock = backend.lease_lock()  # type: ignore[attr-defined]
        if mode == "hold":
            await hold(store, lock, session_id, rest[0])
        elif mode == "usurp":
            await usurp(store, lock, session_id, rest[0])
        elif mode == "rounds":
            await rounds(store, lock, session_id, rest[0], int(rest[1]), int(rest[2]))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await backend.aclose()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
