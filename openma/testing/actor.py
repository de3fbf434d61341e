"""The contract of the SessionActor (:mod:`openma.core.actor`) over a store backend and its lease lock.

Combine ``ActorContract`` with the ``store_backend`` fixture of the store contracts; the backend must offer
``sessions(tenant, ...)`` and ``lease_lock()``.

An adapter that declares ``multi_process`` also provides ``store_backend_factory``: a
:class:`BackendFactory` naming an importable ``async def open(argument: str) -> StoreBackend`` that opens
the *same* storage as ``store_backend`` in another process. The contract then runs two real processes
(``python -m openma.testing._actor_worker``) against one session: the one that does not hold the lock is
told ``SessionBusy``, a holder whose lease was taken over is refused every write with ``LeaseLost`` and
writes nothing, and processes taking turns never interleave (seqs gapless, one epoch per turn). Fights with
holders killed, frozen or cut off at random are in openma's own fault tests, which need servers it controls.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from openma.adapters.telemetry import MemoryTelemetry
from openma.core.actor import acquire_actor
from openma.errors import Conflict, InvalidInput, LeaseLost, NotFound, SessionBusy
from openma.models import Session
from openma.ports.backend import StoreBackend
from openma.ports.lease import LeaseLock
from openma.ports.sessions import SessionStore
from openma.testing.capabilities import requires
from openma.testing.stores import _StoreContractBase

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"


@attrs.frozen
class BackendFactory:
    """How another process opens the backend under test: ``await <target>(argument)``.

    ``target`` is ``"package.module:function"``, importable in a fresh interpreter (the test's ``sys.path``
    is passed on as ``PYTHONPATH``); ``argument`` is a string such as a database path or URL.
    """

    target: str
    argument: str


class _CountingLock:
    """The backend's lease lock, counting the callers currently inside ``acquire``."""

    def __init__(self, lock: LeaseLock) -> None:
        self._lock = lock
        self.inside = 0
        self._entered = anyio.Event()

    def next_entry(self) -> anyio.Event:
        """An event set when the next caller enters ``acquire``."""
        self._entered = anyio.Event()
        return self._entered

    async def acquire(self, key: str, *, wait: float) -> Any:
        self.inside += 1
        self._entered.set()
        try:
            return await self._lock.acquire(key, wait=wait)
        finally:
            self.inside -= 1

    async def aclose(self) -> None:
        await self._lock.aclose()


@attrs.define
class ActorEnv:
    store: SessionStore
    lock: _CountingLock
    telemetry: MemoryTelemetry
    tenant_id: str = ""

    async def session(self) -> Session:
        return await self.store.create(
            agent_id=AGENT,
            environment_id=ENVIRONMENT,
            agent_snapshot={"id": AGENT, "name": "coder", "version": 1},
            environment_snapshot={"id": ENVIRONMENT, "config": {}},
        )

    def actor(self, session_id: str, *, wait: float = 0.0, holder: str | None = None) -> Any:
        return acquire_actor(self.store, self.lock, session_id, wait=wait, telemetry=self.telemetry, holder=holder)


class _Worker:
    """A worker process of the two-process tests, read line by line."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._out = BufferedByteReceiveStream(process.stdout)

    async def line(self, timeout: float = 60) -> str:
        with anyio.fail_after(timeout):
            try:
                return (await self._out.receive_until(b"\n", 1 << 16)).decode()
            except anyio.IncompleteRead:
                stderr = b""
                if self.process.stderr is not None:
                    with anyio.move_on_after(5):
                        async for chunk in self.process.stderr:
                            stderr += chunk
                raise AssertionError(f"the worker ended early: {stderr.decode(errors='replace')[-3000:]}") from None

    async def tell(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(b"go\n")

    async def finish(self, timeout: float = 60) -> None:
        with anyio.fail_after(timeout):
            assert await self.process.wait() == 0


@asynccontextmanager
async def _workers(
    factory: BackendFactory, env: ActorEnv, session_id: str, *commands: list[str]
) -> AsyncIterator[list[_Worker]]:
    """Start one worker process per command; whatever happens, none outlives the block."""
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    started: list[_Worker] = []
    try:
        for command in commands:
            argv = [sys.executable, "-m", "openma.testing._actor_worker", factory.target, factory.argument]
            process = await anyio.open_process([*argv, env.tenant_id, session_id, *command], env=child_env)
            started.append(_Worker(process))
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for worker in started:
                if worker.process.returncode is None:
                    worker.process.kill()
                await worker.process.aclose()


def _message(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}], **extra}


async def _log(env: ActorEnv, session_id: str) -> list[dict[str, Any]]:
    page = await env.store.events(session_id, after=0, limit=1000)
    return [{"seq": e.seq, "id": e.id, **e.data} for e in page]


@pytest.mark.anyio
class ActorContract(_StoreContractBase):
    """One fenced writer per session: lease, epoch fence, inbox promotion, lifecycle, recovery."""

    @pytest.fixture
    async def actor_env(self, store_backend: StoreBackend) -> ActorEnv:
        tenant = await store_backend.tenants.create(name="actor-tenant")
        store = store_backend.sessions(self.ref(store_backend, tenant.id))
        lock = _CountingLock(store_backend.lease_lock())  # type: ignore[attr-defined]
        return ActorEnv(store, lock, MemoryTelemetry(), tenant.id)

    async def test_acquire_append_release(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        async with actor_env.actor(s.id) as actor:
            assert actor.held and actor.epoch >= 1 and actor.recovery is None
            events = await actor.append([_message("hi"), _message("again")])
            assert [e.seq for e in events] == [1, 2]
        assert not actor.held
        with pytest.raises(LeaseLost):
            await actor.append([_message("after release")])
        assert [e["seq"] for e in await _log(actor_env, s.id)] == [1, 2]

    async def test_one_holder_at_a_time(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        async with actor_env.actor(s.id) as first:
            with pytest.raises(SessionBusy):
                async with actor_env.actor(s.id, wait=0):
                    pass
            with pytest.raises(SessionBusy):
                async with actor_env.actor(s.id, wait=0.2):
                    pass
            await first.append([_message("still mine")])
        async with actor_env.actor(s.id, wait=0) as second:
            assert second.epoch == first.epoch + 1
            assert second.recovery is None  # the first released cleanly

    async def test_a_waiter_gets_the_session_when_the_holder_lets_go(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        epochs: list[int] = []

        async def waiter() -> None:
            async with actor_env.actor(s.id, wait=10) as actor:
                epochs.append(actor.epoch)

        async with actor_env.actor(s.id) as holder, anyio.create_task_group() as tg:
            entered = actor_env.lock.next_entry()
            tg.start_soon(waiter)
            await entered.wait()
            await anyio.wait_all_tasks_blocked()
            assert actor_env.lock.inside == 1 and epochs == []  # the waiter is blocked inside the lock's acquire
            await holder.release()
        assert epochs == [holder.epoch + 1]

    async def test_a_stale_holder_writes_nothing(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        async with actor_env.actor(s.id) as stale:
            await stale.append([_message("before")])
            stream = await stale.open_stream(message_id="msg_1")
            await actor_env.store.post(s.id, [_message("queued", id="evt_01h00000000000000000000q01")])
            # Another holder takes the lease (as after this holder's lock connection was cut).
            grant = await actor_env.store.take_lease(s.id, "usurper")
            assert grant.epoch == stale.epoch + 1
            with pytest.raises(LeaseLost):
                await stale.append([_message("too late")])
            assert not stale.held
            writes: list[Callable[[], Awaitable[Any]]] = [
                lambda: stale.append([_message("still too late")]),
                lambda: stale.set_status("running"),
                lambda: stale.promote(),
                lambda: stale.append_stream(stream.id, ["x"]),
                lambda: stale.finalize_stream(stream.id, "completed"),
                lambda: stale.open_stream(),
            ]
            for write in writes:
                with pytest.raises(LeaseLost):
                    await write()
        log = await _log(actor_env, s.id)
        assert [e["content"][0]["text"] for e in log if e["type"] == "user.message"] == ["before"]
        assert (await actor_env.store.get(s.id)).status == "idle"
        assert [i.state for i in await actor_env.store.pending(s.id)] == ["pending"]
        assert (await actor_env.store.get_stream(s.id, stream.id)).chunks == 0

    async def test_lifecycle_transitions_log_their_events(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        async with actor_env.actor(s.id) as actor:
            assert (await actor.set_status("running")).status == "running"
            with pytest.raises(Conflict):
                await actor.set_status("running")
            await actor.set_status("rescheduling", reason="rate limited")
            await actor.set_status("running")
            await actor.set_status("idle", stop_reason={"type": "end_turn"})
            await actor.set_status("terminated", reason="done")
            for target in ("idle", "running", "rescheduling", "terminated"):
                with pytest.raises(Conflict):
                    await actor.set_status(target)
            with pytest.raises(InvalidInput):
                await actor.set_status("paused")
        types = [e["type"] for e in await _log(actor_env, s.id)]
        assert types == [
            "session.status_running",
            "session.status_rescheduled",
            "session.status_running",
            "session.status_idle",
            "session.status_terminated",
        ]
        lifecycle = actor_env.telemetry.of("session.lifecycle")
        assert [f.get("status") for f in lifecycle if "status" in f] == [
            "running",
            "rescheduling",
            "running",
            "idle",
            "terminated",
        ]

    async def test_promotion_is_fifo_and_exactly_once(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        await actor_env.store.post(s.id, [_message(f"m{i}") for i in range(3)])
        async with actor_env.actor(s.id) as actor:
            promoted = await actor.promote()
            assert [e.data["content"][0]["text"] for e in promoted] == ["m0", "m1", "m2"]
            assert [e.seq for e in promoted] == [1, 2, 3]
            assert await actor.promote() == []
        assert len(await _log(actor_env, s.id)) == 3

    async def test_an_interrupt_cancels_what_was_queued_before_it(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        await actor_env.store.post(s.id, [_message("stale 1"), _message("stale 2")])
        await actor_env.store.post(s.id, [{"type": "user.interrupt"}])
        await actor_env.store.post(s.id, [_message("fresh")])
        async with actor_env.actor(s.id) as actor:
            promoted = await actor.promote()
        assert [e.type for e in promoted] == ["user.interrupt", "user.message"]
        assert promoted[1].data["content"][0]["text"] == "fresh"
        log = await _log(actor_env, s.id)
        assert [e["type"] for e in log] == ["user.interrupt", "user.message"]
        assert (await actor_env.store.pending(s.id)).items == []

    async def test_a_holder_that_fails_leaves_recovery_to_the_next(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        with pytest.raises(RuntimeError):
            async with actor_env.actor(s.id) as dying:
                await dying.set_status("running")
                stream = await dying.open_stream(message_id="msg_partial")
                await dying.append_stream(stream.id, ["Hello, ", "wor"])
                await dying.append(
                    [
                        {"type": "agent.tool_use", "id": "tu_1", "name": "bash", "input": {"cmd": "ls"}},
                        {"type": "agent.mcp_tool_use", "id": "mcp_1", "name": "mcp_x_call", "input": {}},
                        {"type": "agent.custom_tool_use", "id": "ctu_1", "name": "lookup", "input": {}},
                    ]
                )
                raise RuntimeError("the turn crashed")
        async with actor_env.actor(s.id) as actor:
            plan = actor.recovery
            assert plan is not None
            assert (plan.finalized_streams, plan.injected_tool_results, plan.injected_mcp_tool_results) == (1, 1, 1)
            assert plan.waiting_on_user == ("ctu_1",)
        log = await _log(actor_env, s.id)
        seqs = [e["seq"] for e in log]
        assert seqs == list(range(1, len(seqs) + 1))  # gapless
        message = next(e for e in log if e["type"] == "agent.message")
        assert message["content"][0]["text"] == "Hello, wor" and message["interrupted"] is True
        assert any(e["type"] == "agent.tool_result" and e["tool_use_id"] == "tu_1" for e in log)
        assert not any(e.get("custom_tool_use_id") == "ctu_1" for e in log)  # never fabricated
        assert log[-1]["type"] == "session.status_idle"
        assert log[-1]["stop_reason"] == {"type": "requires_action", "event_ids": ["ctu_1"]}
        assert (await actor_env.store.get(s.id)).status == "idle"
        assert (await actor_env.store.get_stream(s.id, stream.id)).status == "interrupted"
        assert len(actor_env.telemetry.of("recovery")) == 1
        async with actor_env.actor(s.id) as again:  # recovery runs once
            assert again.recovery is None
        assert len(await _log(actor_env, s.id)) == len(log)

    async def test_recovery_of_a_clean_log_writes_nothing(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        with pytest.raises(RuntimeError):
            async with actor_env.actor(s.id) as dying:
                await dying.append([_message("hi")])
                raise RuntimeError("crash while idle, with nothing open")
        async with actor_env.actor(s.id) as actor:
            assert actor.recovery is not None and actor.recovery.empty
        assert len(await _log(actor_env, s.id)) == 1

    async def test_unknown_or_malformed_sessions(self, actor_env: ActorEnv) -> None:
        with pytest.raises(NotFound):
            async with actor_env.actor("ses_01h0000000000000000000000z"):
                pass
        with pytest.raises(InvalidInput):
            async with actor_env.actor("not-a-session"):
                pass

    @requires("concurrent_writers")
    async def test_many_tasks_racing_for_one_session_never_overlap(self, actor_env: ActorEnv) -> None:
        s = await actor_env.session()
        inside = 0
        overlaps = 0
        acquired = 0

        async def contender(i: int) -> None:
            nonlocal inside, overlaps, acquired
            async with actor_env.actor(s.id, wait=30) as actor:
                inside += 1
                acquired += 1
                overlaps += inside > 1
                await actor.append([_message(f"from {i}", epoch=actor.epoch)])
                await anyio.sleep(0.01)
                inside -= 1

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(contender, i)
        assert acquired == 8 and overlaps == 0
        log = await _log(actor_env, s.id)
        assert [e["seq"] for e in log] == list(range(1, 9))
        epochs = [e["epoch"] for e in log]
        assert epochs == sorted(epochs) and len(set(epochs)) == 8

    # -- two real processes

    @requires("multi_process")
    async def test_two_processes_one_holder_and_a_stale_one_refused(
        self, actor_env: ActorEnv, store_backend_factory: BackendFactory
    ) -> None:
        s = await actor_env.session()
        async with _workers(store_backend_factory, actor_env, s.id, ["hold", "first"]) as [first]:
            ready = await first.line()
            assert ready.startswith("ready "), ready
            first_epoch = int(ready.split()[1])
            async with _workers(store_backend_factory, actor_env, s.id, ["usurp", "second"]) as [second]:
                assert await second.line() == "busy"  # the lock is held by the first process
                took = await second.line()
                assert took == f"took {first_epoch + 1}", took
                assert await second.line() == "appended 2"
                await second.finish()
            await first.tell()  # the first process, still holding its lock, now writes on a stale lease
            outcomes = [await first.line() for _ in range(5)]
            assert outcomes == ["refused"] * 5, outcomes
            await first.finish()
        async with actor_env.actor(s.id, wait=30) as third:
            assert third.epoch == first_epoch + 2
            await third.append([_message("third 1", epoch=third.epoch)])
        log = await _log(actor_env, s.id)
        assert [e["seq"] for e in log] == list(range(1, len(log) + 1))  # gapless
        texts = [(e["content"][0]["text"], e["epoch"]) for e in log if e["type"] == "user.message"]
        assert texts == [("first 1", first_epoch), ("second 1", first_epoch + 1), ("third 1", first_epoch + 2)]
        assert not any("first 2" in str(e) or e.get("type") == "session.status_running" for e in log)

    @requires("multi_process")
    async def test_two_processes_taking_turns_never_interleave(
        self, actor_env: ActorEnv, store_backend_factory: BackendFactory
    ) -> None:
        s = await actor_env.session()
        rounds, per_round = 4, 5
        reported: list[tuple[int, list[str]]] = []
        commands = [["rounds", name, str(rounds), str(per_round)] for name in ("left", "right")]
        async with _workers(store_backend_factory, actor_env, s.id, *commands) as workers:

            async def collect(worker: _Worker) -> None:
                for _ in range(rounds):
                    line = (await worker.line(timeout=120)).split()
                    assert line[0] == "round", line
                    reported.append((int(line[1]), line[2:]))
                await worker.finish()

            async with anyio.create_task_group() as tg:
                for worker in workers:
                    tg.start_soon(collect, worker)
        log = await _log(actor_env, s.id)
        assert [e["seq"] for e in log] == list(range(1, 2 * rounds * per_round + 1))  # gapless, nothing lost
        turns: list[tuple[int, list[str]]] = []
        for event in log:  # consecutive events of one epoch form one turn
            if not turns or turns[-1][0] != event["epoch"]:
                turns.append((event["epoch"], []))
            turns[-1][1].append(event["id"])
        assert sorted(turns) == sorted(reported)  # every turn whole, in one piece, as its process reported it
        assert [epoch for epoch, _ in turns] == sorted({epoch for epoch, _ in turns})  # epochs only go up
        writers = {e["content"][0]["text"].split()[0] for e in log}
        assert writers == {"left", "right"}
