"""Interrupts on both engines: a user.interrupt cancels the running tool (its process tree) or model call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import psutil
import pytest

from openma.testing import Scripted, ScriptedModel
from tests.turn_support import World, engine_settings, open_world, poll, sleeper_pid, text, tool_use

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in open_world(engine_settings(engine, tmp_path, request)):
        yield w


async def _wait_for(world: World, sid: str, kind: str) -> None:
    async with world.t.sessions.subscribe(sid) as tail:
        async for event in tail:
            if event.type == kind:
                return


async def test_an_interrupt_mid_sleep_30_stops_the_tool_within_a_second(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "wait")
    command = "sleep 30 & echo $! > sleep.pid; wait"
    model = ScriptedModel([[text("waiting"), tool_use("bash", {"command": command})], [text("never")]])
    results = []
    done = anyio.Event()

    async def run() -> None:
        results.append(await world.t.sessions.run(sid, model=model))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await _wait_for(world, sid, "agent.tool_use")
        root = Path(world.settings.local_sandbox_root)

        async def written() -> bool:
            return sleeper_pid(root) is not None

        await poll(written)
        pid = sleeper_pid(root)
        assert pid is not None
        assert psutil.pid_exists(pid)
        started = time.perf_counter()
        await world.t.sessions.post(sid, [{"type": "user.interrupt"}])
        with anyio.fail_after(5):
            await done.wait()
        elapsed = time.perf_counter() - started
    result = results[0]
    assert result.stop_reason == "interrupted"
    assert elapsed <= 1.0, f"interrupt to idle took {elapsed:.3f}s"
    assert (await world.t.sessions.get(sid)).status == "idle"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    (use,) = await world.of(sid, "agent.tool_use")
    (res,) = await world.of(sid, "agent.tool_result")
    assert res["tool_use_id"] == use["id"] and res["is_error"] is True and "interrupted" in res["content"]
    types = await world.types(sid)
    assert types[-3:] == ["agent.tool_result", "user.interrupt", "session.status_idle"]
    assert (await world.of(sid, "session.status_idle"))[-1]["stop_reason"] == {"type": "interrupted"}
    assert len(model.requests) == 1
    assert [c["outcome"] for c in world.telemetry.of("tool.call")] == ["interrupted"]
    # The next input runs a normal turn that sees the interrupted result.
    await world.say(sid, "go on")
    after = await world.t.sessions.run(sid, model=ScriptedModel([[text("ok")]]))
    assert after.stop_reason == "end_turn"


async def test_an_interrupt_mid_stream_logs_what_was_streamed(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "talk")
    long = "one two three four five six seven eight nine ten " * 4
    model = ScriptedModel([Scripted([text(long)], delay=0.3)])
    results = []
    done = anyio.Event()

    async def run() -> None:
        results.append(await world.t.sessions.run(sid, model=model))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await _wait_for(world, sid, "span.model_request_start")

        async def streamed() -> bool:
            streams = (await world.t.sessions.streams(sid)).items
            return bool(streams and streams[0].text)

        await poll(streamed)
        await world.t.sessions.post(sid, [{"type": "user.interrupt"}])
        with anyio.fail_after(5):
            await done.wait()
    assert results[0].stop_reason == "interrupted"
    (stream,) = (await world.t.sessions.streams(sid, status=None)).items
    assert stream.status == "interrupted" and stream.text and long.startswith(stream.text) and stream.text != long
    (message,) = await world.of(sid, "agent.message")
    assert message["interrupted"] is True and message["content"][0]["text"] == stream.text
    (end,) = await world.of(sid, "span.model_request_end")
    assert end["finish_reason"] == "interrupted" and end["is_error"] is True


async def test_an_interrupt_while_waiting_on_the_user_closes_the_wait(world: World) -> None:
    custom = {"type": "custom", "name": "lookup", "description": "", "input_schema": {"type": "object"}}
    sid = await world.session(tools=[custom])
    await world.say(sid, "look")
    first = await world.t.sessions.run(sid, model=ScriptedModel([[tool_use("lookup", {})]]))
    assert first.stop_reason == "requires_action"
    await world.t.sessions.post(sid, [{"type": "user.interrupt"}])
    second = await world.t.sessions.run(sid, model=ScriptedModel([]))
    assert second.stop_reason == "interrupted"
    (res,) = await world.of(sid, "agent.tool_result")
    assert res["is_error"] is True
    await world.say(sid, "never mind")
    model = ScriptedModel([[text("ok")]])
    assert (await world.t.sessions.run(sid, model=model)).stop_reason == "end_turn"
    roles = [m["role"] for m in model.requests[0].messages]
    assert roles == ["user", "assistant", "user"]


async def test_an_interrupt_then_a_message_closes_the_wait_and_runs(world: World) -> None:
    custom = {"type": "custom", "name": "lookup", "description": "", "input_schema": {"type": "object"}}
    sid = await world.session(tools=[custom])
    await world.say(sid, "look")
    assert (await world.t.sessions.run(sid, model=ScriptedModel([[tool_use("lookup", {})]]))).stop_reason == (
        "requires_action"
    )
    await world.t.sessions.post(sid, [{"type": "user.interrupt"}])
    await world.say(sid, "something else")
    model = ScriptedModel([[text("sure")]])
    assert (await world.t.sessions.run(sid, model=model)).stop_reason == "end_turn"
    (res,) = await world.of(sid, "agent.tool_result")
    assert res["is_error"] is True
    assert model.requests[0].messages[-1]["content"][-1] == text("something else")
