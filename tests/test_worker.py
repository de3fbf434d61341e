"""``openma.Worker`` in one process, on both engines: it runs every runnable session once, skips sessions
another holder has, loops while a session stays runnable, drops terminated ones, drains or hands back on
stop, and reports its state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

import openma
from openma import InvalidInput, Worker
from openma.adapters.sql.backend import SqlStoreBackend
from openma.testing import ScriptedModel
from tests.turn_support import World, engine_settings, open_world, poll, text

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in open_world(engine_settings(engine, tmp_path, request)):
        yield w


async def runnable(world: World) -> list[str]:
    backend = world.oma.backend("sessions")
    assert isinstance(backend, SqlStoreBackend)
    return [r.session_id for r in await backend.runnable_index().admin_runnable(limit=1000)]


async def holds(check: Callable[[], bool]) -> bool:
    return check()


async def turns(world: World, sid: str) -> int:
    return len(await world.of(sid, "span.model_request_start"))


async def test_every_session_with_input_gets_exactly_one_turn(world: World) -> None:
    sids = [await world.session() for _ in range(12)]
    model = ScriptedModel([[text("done")] for _ in sids])
    async with Worker(world.oma, model=model, concurrency=4, poll_interval=0.05) as worker:
        for sid in sids:
            await world.say(sid, "go")
        await worker.wait_idle(timeout=30)
        state = worker.state
    assert [await turns(world, sid) for sid in sids] == [1] * len(sids)
    assert await runnable(world) == []
    assert state.processed == len(sids) and state.errors == 0 and state.running == ()
    assert worker.state.status == "stopped"
    assert "processed=12" in repr(worker)
    outcomes = [r["outcome"] for r in world.telemetry.of("worker.turn")]
    assert outcomes.count("ok") == len(sids)


async def test_a_held_session_is_skipped_until_its_holder_lets_go(world: World) -> None:
    sid = await world.session()
    model = ScriptedModel([[text("hello")]])
    async with Worker(world.oma, model=model, concurrency=2, poll_interval=0.05) as worker:
        async with world.t.sessions.actor(sid):  # taken before the input exists, so the worker cannot win it
            await world.say(sid, "hi")
            await poll(lambda: holds(lambda: worker.state.busy >= 1))
            assert await turns(world, sid) == 0
        await worker.wait_idle(timeout=20)
    assert await turns(world, sid) == 1 and model.remaining == 0


async def test_input_posted_during_a_turn_gets_another_turn(world: World) -> None:
    sid = await world.session()
    started = anyio.Event()

    def first(_request: object) -> list[dict[str, str]]:
        started.set()
        return [text("one")]

    model = ScriptedModel([first, [text("two")]], delay=0.3)
    async with Worker(world.oma, model=model, concurrency=1, poll_interval=0.05) as worker:
        await world.say(sid, "first")
        await started.wait()
        await world.say(sid, "second")
        await poll(lambda: turns(world, sid), timeout=20)
        await worker.wait_idle(timeout=20)
    assert await turns(world, sid) == 2 and model.remaining == 0
    assert await runnable(world) == []


async def test_terminated_sessions_are_dropped_not_run(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    await world.t.sessions.unfenced_set_status(sid, "terminated")
    model = ScriptedModel([])
    async with Worker(world.oma, model=model, poll_interval=0.05) as worker:
        await worker.wait_idle(timeout=20)
    assert await runnable(world) == [] and model.requests == []
    assert [r["outcome"] for r in world.telemetry.of("worker.turn")] == ["dropped"]


async def test_a_failing_turn_is_retried_after_a_backoff(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    calls = 0

    class Flaky:
        name = "flaky"

        def stream(self, request: openma.ModelRequest) -> object:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("the model client crashed")
            return ScriptedModel([[text("ok")]]).stream(request)

        async def aclose(self) -> None:
            pass

    async with Worker(world.oma, model=Flaky(), poll_interval=0.05) as worker:  # type: ignore[arg-type]
        await poll(lambda: turns(world, sid), timeout=20)
        await worker.wait_idle(timeout=20)
        assert worker.state.errors == 1 and worker.state.processed == 1
    assert await runnable(world) == []
    assert any(r["where"] == "worker.turn" for r in world.telemetry.of("silent_catch"))


async def test_stop_drains_turns_within_the_deadline(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    model = ScriptedModel([[text("slow but done")]], delay=0.5)
    worker = Worker(world.oma, model=model, poll_interval=0.05, drain_timeout=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await poll(lambda: holds(lambda: bool(worker.state.running)))
        worker.stop()
        assert worker.state.status == "stopping"
        with anyio.fail_after(10):
            await worker.wait_stopped()
    assert await turns(world, sid) == 1 and await runnable(world) == []
    assert worker.state.processed == 1


async def test_past_the_deadline_a_turn_is_handed_back_and_recovered(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    slow = ScriptedModel([[text("never finishes")]], delay=30)
    worker = Worker(world.oma, model=slow, poll_interval=0.05, drain_timeout=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await poll(lambda: turns(world, sid))
        worker.stop()
        with anyio.fail_after(10):
            await worker.wait_stopped()
    assert await runnable(world) == [sid]  # handed back: still runnable
    async with Worker(world.oma, model=ScriptedModel([[text("finished")]]), poll_interval=0.05) as second:
        await second.wait_idle(timeout=20)
    assert await runnable(world) == []
    messages = await world.of(sid, "agent.message")
    assert messages[-1]["content"] == [text("finished")] or any(m["content"] == [text("finished")] for m in messages)


async def test_bad_arguments_are_invalid_input(world: World) -> None:
    for kwargs in ({"concurrency": 0}, {"concurrency": True}, {"concurrency": 1.5}, {"drain_timeout": -1}):
        with pytest.raises(InvalidInput):
            Worker(world.oma, **kwargs)  # type: ignore[arg-type]
    worker = Worker(world.oma, poll_interval=0.05)
    async with worker:
        pass
    with pytest.raises(openma.ConfigError):
        await worker.run()
