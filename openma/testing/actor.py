"""The contract of the SessionActor (:mod:`openma.core.actor`) over a store backend and its lease lock.

Combine ``ActorContract`` with the ``store_backend`` fixture of the store contracts; the backend must offer
``sessions(tenant, ...)`` and ``lease_lock()``. Cross-process fights (a holder killed, frozen or cut off)
are in openma's own fault tests, which need real processes and servers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import pytest

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


@attrs.define
class ActorEnv:
    store: SessionStore
    lock: LeaseLock
    telemetry: MemoryTelemetry

    async def session(self) -> Session:
        return await self.store.create(
            agent_id=AGENT,
            environment_id=ENVIRONMENT,
            agent_snapshot={"id": AGENT, "name": "coder", "version": 1},
            environment_snapshot={"id": ENVIRONMENT, "config": {}},
        )

    def actor(self, session_id: str, *, wait: float = 0.0, holder: str | None = None) -> Any:
        return acquire_actor(self.store, self.lock, session_id, wait=wait, telemetry=self.telemetry, holder=holder)


def _message(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}], **extra}


async def _log(env: ActorEnv, session_id: str) -> list[dict[str, Any]]:
    page = await env.store.events(session_id, after=0, limit=1000)
    return [{"seq": e.seq, **e.data} for e in page]


@pytest.mark.anyio
class ActorContract(_StoreContractBase):
    """One fenced writer per session: lease, epoch fence, inbox promotion, lifecycle, recovery."""

    @pytest.fixture
    async def actor_env(self, store_backend: StoreBackend) -> ActorEnv:
        tenant = await store_backend.tenants.create(name="actor-tenant")
        store = store_backend.sessions(self.ref(store_backend, tenant.id))
        return ActorEnv(store, store_backend.lease_lock(), MemoryTelemetry())  # type: ignore[attr-defined]

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
            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            assert epochs == []
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
        assert await actor_env.store.pending(s.id) == []

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
