"""The durable runnable index on both engines: posting marks a session runnable in the post's own write unit,
a turn clears it only when the inbox is drained, stale holders cannot clear it, terminated and deleted
sessions leave it, and the worker's read is index-backed on both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openma import LeaseLost
from openma.adapters.sql.backend import SqlStoreBackend
from openma.testing import ScriptedModel
from tests.turn_support import World, engine_settings, open_world, text

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in open_world(engine_settings(engine, tmp_path, request)):
        yield w


def index(world: World) -> Any:
    backend = world.oma.backend("sessions")
    assert isinstance(backend, SqlStoreBackend)
    return backend.runnable_index()


async def runnable(world: World) -> list[tuple[str, str]]:
    return [(r.tenant_id, r.session_id) for r in await index(world).admin_runnable(limit=100)]


async def test_post_marks_runnable_and_a_turn_clears_it(world: World) -> None:
    sid = await world.session()
    assert await runnable(world) == []
    await world.say(sid, "hi")
    assert await runnable(world) == [(world.tenant_id, sid)]
    await world.say(sid, "again")  # already runnable: still one entry
    assert await runnable(world) == [(world.tenant_id, sid)]
    result = await world.t.sessions.run(sid, model=ScriptedModel([[text("hello")]]))
    assert result.stop_reason == "end_turn"
    assert await runnable(world) == []


async def test_a_refused_or_duplicate_post_marks_nothing(world: World) -> None:
    sid = await world.session()
    event = {"type": "user.message", "id": "evt_01j00000000000000000000000", "content": [text("x")]}
    await world.t.sessions.post(sid, [event])
    async with world.t.sessions.actor(sid) as actor:
        await actor.promote()
        assert await actor.store.clear_runnable(sid, fence=actor.epoch) is True
    await world.t.sessions.post(sid, [event])  # a retry of a promoted input: nothing pending
    assert await runnable(world) == []
    await world.t.sessions.archive(sid)
    with pytest.raises(Exception):  # noqa: B017 - archived: the post is refused (Conflict)
        await world.say(sid, "late")
    assert await runnable(world) == []


async def test_input_posted_during_the_turn_keeps_the_session_runnable(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "first")
    async with world.t.sessions.actor(sid) as actor:
        assert len(await actor.promote()) == 1
        await world.say(sid, "meanwhile")
        assert await actor.store.clear_runnable(sid, fence=actor.epoch) is False
        assert await runnable(world) == [(world.tenant_id, sid)]
        await actor.promote()
        assert await actor.store.clear_runnable(sid, fence=actor.epoch) is True
    assert await runnable(world) == []


async def test_a_stale_holder_cannot_clear(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    async with world.t.sessions.actor(sid) as actor:
        stale = actor.epoch - 1
        await actor.promote()
        with pytest.raises(LeaseLost):
            await actor.store.clear_runnable(sid, fence=stale)
    assert await runnable(world) == [(world.tenant_id, sid)]


async def test_the_index_spans_tenants_oldest_first(world: World) -> None:
    first = await world.session()
    other_tenant = await world.oma.tenants.create(name="other")
    other = World(world.oma, world.telemetry, world.settings, other_tenant.id)
    second = await other.session()
    await world.say(first, "a")
    await other.say(second, "b")
    assert await runnable(world) == [(world.tenant_id, first), (other_tenant.id, second)]
    assert len(await index(world).admin_runnable(limit=1)) == 1


async def test_terminated_and_deleted_sessions_leave_the_index(world: World) -> None:
    ended = await world.session()
    gone = await world.session()
    live = await world.session()
    for sid in (ended, gone, live):
        await world.say(sid, "hi")
        await world.t.sessions.schedule_wakeup(sid, delay=3600)
    assert not await index(world).admin_drop_runnable(world.tenant_id, live)  # still takes turns: kept
    await world.t.sessions.unfenced_set_status(ended, "terminated")
    assert await index(world).admin_drop_runnable(world.tenant_id, ended)
    await world.t.sessions.delete(gone)
    assert await runnable(world) == [(world.tenant_id, live)]
    assert await world.t.sessions.list_wakeups(ended) == []
    assert len(await world.t.sessions.list_wakeups(live)) == 1


async def test_the_worker_reads_are_index_backed(world: World, engine: str) -> None:
    backend = world.oma.backend("sessions")
    assert isinstance(backend, SqlStoreBackend)
    queries = [
        "SELECT tenant_id, session_id, since FROM session_runnable ORDER BY since, tenant_id, session_id LIMIT 10",
        "SELECT tenant_id, session_id, id FROM session_wakeups WHERE next_due <= 5"
        " ORDER BY next_due, tenant_id, session_id, id LIMIT 10",
        "SELECT MIN(next_due) AS due FROM session_wakeups",
    ]
    for sql in queries:
        if engine == "sqlite":
            rows = await backend.client.fetch_all(f"EXPLAIN QUERY PLAN {sql}")
            plan = " | ".join(str(r["detail"]) for r in rows)
            assert "USING COVERING INDEX session_" in plan or "USING INDEX session_" in plan, plan
            assert "TEMP B-TREE" not in plan, plan  # no sort: the index order is the answer's order
        else:
            async with backend.client.transaction() as tx:
                await tx.execute("SET LOCAL enable_seqscan = off")
                rows = await tx.fetch_all(f"EXPLAIN {sql}")
            plan = " | ".join(str(next(iter(r.values()))) for r in rows)
            assert "Index" in plan and "Sort" not in plan, plan
        assert " sessions" not in plan, plan
