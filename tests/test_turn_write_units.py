"""How a turn writes: a tool step is one write unit, a held tool result is written on time, and in order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma.adapters.sqlite import SqliteClient
from openma.core.turns import TurnOptions
from openma.core.turns.deferred import Deferred
from openma.models import Event
from openma.ports.sql import BatchResult, Statement
from openma.testing import Scripted, ScriptedModel
from tests.turn_support import World, engine_settings, open_world, poll, text, tool_use

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in open_world(engine_settings(engine, tmp_path, request)):
        yield w


def calls(model: ScriptedModel, n: int) -> Callable[[], Awaitable[bool]]:
    """A :func:`poll` check: the model has received ``n`` requests."""

    async def check() -> bool:
        return len(model.requests) >= n

    return check


def holds(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


def _bash_steps(n: int) -> list[Any]:
    return [[tool_use("bash", {"command": "true"}, id=f"t{i}")] for i in range(n)] + [[text("done")]]


async def _log(world: World, sid: str) -> list[Event]:
    return list((await world.t.sessions.events(sid, limit=1000)).items)


async def test_a_held_result_is_written_with_the_next_answer_in_order(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "go")
    options = TurnOptions(hold_results=60.0)  # never on its own: always with the next write
    result = await world.t.sessions.run(sid, model=ScriptedModel(_bash_steps(2)), options=options)
    assert result.stop_reason == "end_turn"
    log = await _log(world, sid)
    body = [e.type for e in log if e.type.startswith(("agent.", "span."))]
    step = ["span.model_request_start", "agent.tool_use", "span.model_request_end", "agent.tool_result"]
    last = ["span.model_request_start", "agent.message", "span.model_request_end"]
    assert body == step + step + last
    uses = [e for e in log if e.type == "agent.tool_use"]
    results = [e for e in log if e.type == "agent.tool_result"]
    assert [r.data["tool_use_id"] for r in results] == [u.id for u in uses]
    # The first result, the second step's span start and its answer are one unit: one time, consecutive seqs.
    first = results[0]
    together = [e for e in log if first.seq <= e.seq <= uses[1].seq + 1]
    assert [e.type for e in together] == ["agent.tool_result", *step[:3]]
    assert len({e.created_at for e in together}) == 1
    assert [e.seq for e in together] == list(range(first.seq, first.seq + 4))
    assert result.events == log[-len(result.events) :]


async def test_a_held_result_is_written_on_its_own_while_a_slow_model_answers(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "go")
    slow = Scripted([text("thinking it over")], delay=0.3)
    model = ScriptedModel([[tool_use("bash", {"command": "true"})], slow])
    seen_during_call: list[bool] = []

    async def watch() -> None:
        await poll(calls(model, 2))
        async with world.t.sessions.subscribe(sid) as tail:
            async for event in tail:
                if event.type == "agent.tool_result":
                    # Written while the second call still streams: its answer is not logged yet.
                    seen_during_call.append("agent.message" not in await world.types(sid))
                    return

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        result = await world.t.sessions.run(sid, model=model, options=TurnOptions(hold_results=0.05))
    assert result.stop_reason == "end_turn" and seen_during_call == [True]
    log = await _log(world, sid)
    (res,) = [e for e in log if e.type == "agent.tool_result"]
    message = next(e for e in log if e.type == "agent.message")
    assert res.created_at < message.created_at


async def test_an_interrupt_writes_the_held_result_before_closing_the_turn(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "go")
    model = ScriptedModel([[tool_use("bash", {"command": "true"})], Scripted([text("never finished " * 20)], delay=5)])
    options = TurnOptions(hold_results=60.0)

    async def interrupt() -> None:
        await poll(calls(model, 2))
        await world.t.sessions.post(sid, [{"type": "user.interrupt"}])

    async with anyio.create_task_group() as tg:
        tg.start_soon(interrupt)
        result = await world.t.sessions.run(sid, model=model, options=options)
    assert result.stop_reason == "interrupted"
    log = await _log(world, sid)
    (use,) = [e for e in log if e.type == "agent.tool_use"]
    (res,) = [e for e in log if e.type == "agent.tool_result"]
    assert res.data["tool_use_id"] == use.id and res.data["is_error"] is False  # the real result, not recovery's
    starts = [e for e in log if e.type == "span.model_request_start"]
    ends = [e for e in log if e.type == "span.model_request_end"]
    assert [e.data["model_request_start_id"] for e in ends] == [s.id for s in starts]
    assert ends[-1].data["finish_reason"] == "interrupted" and res.seq < starts[-1].seq < ends[-1].seq
    assert (await world.t.sessions.get(sid)).status == "idle"


@pytest.mark.parametrize("engine", ["sqlite"])
async def test_a_tool_step_costs_one_write_unit(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    units = 0
    run_batch = SqliteClient.run_batch

    async def counted(self: SqliteClient, statements: Sequence[Statement]) -> BatchResult:
        nonlocal units
        units += 1
        return await run_batch(self, statements)

    monkeypatch.setattr(SqliteClient, "run_batch", counted)
    sid = await world.session()
    options = TurnOptions(hold_results=60.0)
    counts = []
    for steps in (2, 2, 6):  # the first turn also creates the sandbox
        await world.say(sid, "go")
        units = 0
        result = await world.t.sessions.run(sid, model=ScriptedModel(_bash_steps(steps)), options=options)
        assert result.stop_reason == "end_turn"
        counts.append(units)
    assert counts[2] - counts[1] == 4


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_deferred_take_wait_and_errors() -> None:
    class Actor:
        def __init__(self) -> None:
            self.writes: list[list[dict[str, Any]]] = []
            self.fail: BaseException | None = None
            self.tries = 0

        async def append(self, events: Sequence[dict[str, Any]]) -> list[Event]:
            self.tries += 1
            if self.fail is not None:
                raise self.fail
            self.writes.append(list(events))
            return []

    actor = Actor()
    later = Deferred(actor, hold=0.0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        later.hold([{"type": "x"}])  # no task group
    async with anyio.create_task_group() as tg:
        later.task_group = tg
        later.hold([{"type": "a"}])
        with pytest.raises(RuntimeError):
            later.hold([{"type": "b"}])  # one batch at a time
        assert later.take() == [{"type": "a"}] and not later.pending and later.take() == []
        later.hold([{"type": "c"}])
        await poll(holds(lambda: bool(actor.writes)))  # the timer wrote it on its own
        assert later.take() == [] and later.pending
        assert await later.wait() == [] and not later.pending and actor.writes == [[{"type": "c"}]]
        actor.fail = RuntimeError("lease lost")
        later.hold([{"type": "d"}])
        await poll(holds(lambda: actor.tries == 2))
        assert later.take() == [] and later.pending
        with pytest.raises(RuntimeError, match="lease lost"):
            await later.wait()
        assert not later.pending and await later.wait() == []
