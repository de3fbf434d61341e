"""The turn loop on both engines: text and tool turns, requires_action, confirmations, retries, limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openma import ConfigError, Conflict, ModelError, RetryPolicy, to_json
from openma.testing import ScriptedModel
from tests.turn_support import World, engine_settings, open_world, text, tool_use

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(attempts=3, initial=0.001, max_wait=0.01)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in open_world(engine_settings(engine, tmp_path, request)):
        yield w


async def test_a_text_turn_streams_logs_and_goes_idle(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    model = ScriptedModel([[{"type": "thinking", "thinking": "the user greets"}, text("Hello there, friend!")]])
    result = await world.t.sessions.run(sid, model=model)
    assert result.stop_reason == "end_turn"
    assert [e.type for e in result.events] == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.thinking",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    message = next(e for e in result.events if e.type == "agent.message")
    assert message.data["content"] == [text("Hello there, friend!")]
    end = next(e for e in result.events if e.type == "span.model_request_end")
    assert end.data["finish_reason"] == "end_turn" and end.data["model_usage"]["output_tokens"] > 0
    assert end.data["model_request_start_id"] == result.events[2].id
    assert result.usage.output_tokens == end.data["model_usage"]["output_tokens"]
    request = model.requests[0]
    assert request.model == "m-1" and request.system == "be brief"
    assert request.messages == [{"role": "user", "content": [text("hi")]}]
    assert {t["name"] for t in request.tools} == {"bash", "read", "write", "edit", "glob", "grep"}
    stream = (await world.t.sessions.streams(sid, status="completed")).items
    assert len(stream) == 1 and stream[0].text == "Hello there, friend!" and stream[0].message_id
    assert (await world.t.sessions.get(sid)).status == "idle"
    assert [r["outcome"] for r in world.telemetry.of("model.call")] == ["ok"]
    as_json = json.loads(to_json(result))
    assert as_json["stop_reason"] == "end_turn" and len(as_json["events"]) == 7 and as_json["usage"]["output_tokens"]
    # Nothing new from the user: the next run calls no model and changes nothing.
    again = await world.t.sessions.run(sid, model=ScriptedModel([]))
    assert again.stop_reason == "end_turn" and again.events == []


async def test_a_bash_result_is_seen_by_the_next_model_call(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "count")
    model = ScriptedModel([[text("running"), tool_use("bash", {"command": "echo $((6*7))"})], [text("It is 42.")]])
    result = await world.t.sessions.run(sid, model=model)
    assert result.stop_reason == "end_turn"
    use = (await world.of(sid, "agent.tool_use"))[0]
    assert use["evaluated_permission"] == "allow" and use["provider_id"] == "toolu_1"
    (res,) = await world.of(sid, "agent.tool_result")
    assert res["tool_use_id"] == use["id"] and res["content"].strip() == "42" and res["is_error"] is False
    second = model.requests[1].messages
    assert second[1]["role"] == "assistant" and second[1]["content"][-1]["id"] == use["id"]
    assert second[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": res["content"]}],
    }
    calls = world.telemetry.of("tool.call")
    assert [(c["tool"], c["outcome"]) for c in calls] == [("bash", "ok")]


async def test_write_read_edit_glob_grep_round_trip(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "files")
    model = ScriptedModel(
        [
            [tool_use("write", {"file_path": "src/a.py", "content": "x = 1\ny = 2\n"}, "w")],
            [tool_use("edit", {"file_path": "src/a.py", "old_string": "y = 2", "new_string": "y = 3"}, "e")],
            [
                tool_use("read", {"file_path": "src/a.py"}, "r"),
                tool_use("glob", {"pattern": "**/*.py"}, "g"),
                tool_use("grep", {"pattern": "y = [0-9]", "glob": "*.py"}, "s"),
                tool_use("edit", {"file_path": "src/a.py", "old_string": "nope", "new_string": "z"}, "bad"),
            ],
            [text("done")],
        ]
    )
    result = await world.t.sessions.run(sid, model=model)
    assert result.stop_reason == "end_turn"
    uses = {u["provider_id"]: u["id"] for u in await world.of(sid, "agent.tool_use")}
    results = {r["tool_use_id"]: r for r in await world.of(sid, "agent.tool_result")}
    by = {k: results[v] for k, v in uses.items()}
    assert by["w"]["is_error"] is False and by["e"]["is_error"] is False
    assert by["r"]["content"] == "     1\tx = 1\n     2\ty = 3\n"
    assert by["g"]["content"].split() == ["src/a.py"]
    assert "src/a.py:2:y = 3" in by["s"]["content"]
    assert by["bad"]["is_error"] is True and "not found" in by["bad"]["content"]


async def test_custom_tool_requires_action_then_resumes_from_the_log(world: World) -> None:
    custom = {"type": "custom", "name": "lookup", "description": "ask the host", "input_schema": {"type": "object"}}
    sid = await world.session(tools=[custom])
    await world.say(sid, "look it up")
    first = await world.t.sessions.run(sid, model=ScriptedModel([[tool_use("lookup", {"q": "x"})]]))
    assert first.stop_reason == "requires_action"
    use = next(e for e in first.events if e.type == "agent.custom_tool_use")
    idle = first.events[-1]
    assert idle.type == "session.status_idle"
    assert idle.data["stop_reason"] == {"type": "requires_action", "event_ids": [use.id]}
    # Running again before the host answered changes nothing.
    waiting = await world.t.sessions.run(sid, model=ScriptedModel([]))
    assert waiting.stop_reason == "requires_action" and waiting.events == []
    await world.t.sessions.post(
        sid, [{"type": "user.custom_tool_result", "custom_tool_use_id": use.id, "content": [text("found: 7")]}]
    )
    model = ScriptedModel([[text("It is 7.")]])
    second = await world.t.sessions.run(sid, model=model)  # a fresh model: nothing carried over in memory
    assert second.stop_reason == "end_turn"
    last = model.requests[0].messages[-1]
    assert last == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use.id, "content": [text("found: 7")]}],
    }


@pytest.mark.parametrize("answer", ["deny", "allow"])
async def test_always_ask_waits_for_a_confirmation(world: World, answer: str) -> None:
    toolset = {
        "type": "agent_toolset_20260401",
        "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}],
    }
    sid = await world.session(tools=[toolset])
    await world.say(sid, "rm it")
    first = await world.t.sessions.run(sid, model=ScriptedModel([[tool_use("bash", {"command": "echo ran"})]]))
    assert first.stop_reason == "requires_action"
    use = next(e for e in first.events if e.type == "agent.tool_use")
    assert use.data["evaluated_permission"] == "ask"
    assert not await world.of(sid, "agent.tool_result")
    confirmation = {"type": "user.tool_confirmation", "tool_use_id": use.id, "result": answer}
    if answer == "deny":
        confirmation["deny_message"] = "not today"
    await world.t.sessions.post(sid, [confirmation])
    model = ScriptedModel([[text("ok")]])
    second = await world.t.sessions.run(sid, model=model)
    assert second.stop_reason == "end_turn"
    (res,) = await world.of(sid, "agent.tool_result")
    outcomes = [c["outcome"] for c in world.telemetry.of("tool.call")]
    if answer == "deny":
        assert res["is_error"] is True and "not today" in res["content"] and outcomes == ["denied"]
    else:
        assert res["is_error"] is False and res["content"].strip() == "ran" and outcomes == ["ok"]
    assert model.requests[0].messages[-1]["content"][0]["tool_use_id"] == use.id


async def test_a_retryable_error_is_retried(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    model = ScriptedModel([ModelError("overloaded", retryable=True), [text("fine")]])
    result = await world.t.sessions.run(sid, model=model, retry=FAST)
    assert result.stop_reason == "end_turn" and len(model.requests) == 2
    ends = await world.of(sid, "span.model_request_end")
    assert [e["is_error"] for e in ends] == [True, False] and ends[0]["retryable"] is True
    assert [s.status for s in (await world.t.sessions.streams(sid, status=None)).items] == ["completed"]
    assert [r["outcome"] for r in world.telemetry.of("model.call")] == ["failed", "ok"]


async def test_errors_end_the_turn_with_session_error(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    result = await world.t.sessions.run(sid, model=ScriptedModel([ModelError("bad request")]), retry=FAST)
    assert result.stop_reason == "error"
    (error,) = await world.of(sid, "session.error")
    assert error["error"]["retry_status"] == "non_retryable" and error["error"]["type"] == "model_error"
    assert result.events[-1].data["stop_reason"] == {"type": "error"}
    await world.say(sid, "again")
    flaky = ScriptedModel([ModelError("rate limited", retryable=True)] * 3)
    exhausted = await world.t.sessions.run(sid, model=flaky, retry=FAST)
    assert exhausted.stop_reason == "error" and len(flaky.requests) == 3
    assert (await world.of(sid, "session.error"))[-1]["error"]["retry_status"] == "retries_exhausted"
    assert (await world.t.sessions.get(sid)).status == "idle"


async def test_max_steps_stops_the_turn(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "loop")
    model = ScriptedModel([[tool_use("bash", {"command": "true"}, f"t{i}")] for i in range(5)])
    result = await world.t.sessions.run(sid, model=model, max_steps=2)
    assert result.stop_reason == "max_steps" and len(model.requests) == 2
    assert result.events[-1].data["stop_reason"] == {"type": "max_steps"}
    assert len(await world.of(sid, "agent.tool_result")) == 2


async def test_model_none_needs_a_resolver(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    with pytest.raises(ConfigError):
        await world.t.sessions.run(sid)
    seen = []

    def resolve(agent: dict[str, object]) -> ScriptedModel:
        seen.append(agent["model"])
        return ScriptedModel([[text("resolved")]])

    world.oma.model_resolver = resolve
    assert (await world.t.sessions.run(sid)).stop_reason == "end_turn" and seen == ["m-1"]


async def test_a_long_history_is_compacted_not_failed(world: World) -> None:
    from openma.core.turns import TurnOptions

    sid = await world.session()
    for i in range(6):
        await world.say(sid, f"question {i} " + "y" * 600)
        await world.t.sessions.run(sid, model=ScriptedModel([[text(f"answer {i}")]]))
    await world.say(sid, "last")
    model = ScriptedModel([[text("done")]])
    result = await world.t.sessions.run(sid, model=model, options=TurnOptions(budget_tokens=600))
    assert result.stop_reason == "end_turn"
    (compacted,) = await world.of(sid, "agent.thread_context_compacted")
    assert compacted["trigger"] == "auto" and compacted["pre_tokens"] > 600
    shown = model.requests[0].messages
    assert "compacted" in shown[0]["content"][0]["text"] and shown[-1]["content"][-1] == text("last")
    assert len(shown) == compacted["compacted_message_count"] < compacted["original_message_count"]


async def test_every_event_a_turn_logs_is_a_typed_catalogue_event(world: World) -> None:
    from openma import events

    sid = await world.session()
    await world.say(sid, "go")
    model = ScriptedModel(
        [[{"type": "thinking", "thinking": "t"}, tool_use("bash", {"command": "echo hi"})], [text("ok")]]
    )
    await world.t.sessions.run(sid, model=model)
    logged = (await world.t.sessions.events(sid, limit=1000)).items
    typed = [events.from_dict(e.data) for e in logged]
    assert not [t for t in typed if isinstance(t, events.UnknownEvent)]
    assert [t.to_dict() for t in typed] == [e.data for e in logged]


async def test_an_unexpected_error_propagates_as_itself_and_the_next_run_recovers(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")

    def broken(request: object) -> list[dict[str, str]]:
        raise RuntimeError("adapter bug")

    with pytest.raises(RuntimeError, match="adapter bug"):
        await world.t.sessions.run(sid, model=ScriptedModel([broken]))
    assert (await world.t.sessions.get(sid)).status == "running"  # left for the next holder to recover
    result = await world.t.sessions.run(sid, model=ScriptedModel([[text("back")]]))
    assert result.stop_reason == "end_turn"
    types = await world.types(sid)
    assert types.index("session.warning") < types.index("session.status_idle") < len(types) - len(result.events)
    assert (await world.t.sessions.get(sid)).status == "idle"


async def test_bad_arguments_and_terminated_sessions_are_refused(world: World) -> None:
    from openma import InvalidInput

    sid = await world.session()
    for bad in (0, -1, True, "3", 10_001):
        with pytest.raises(InvalidInput):
            await world.t.sessions.run(sid, model=ScriptedModel([]), max_steps=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await world.t.sessions.run("nope", model=ScriptedModel([]))
    await world.t.sessions.unfenced_set_status(sid, "terminated")
    with pytest.raises(Conflict):
        await world.t.sessions.run(sid, model=ScriptedModel([]))


async def test_several_tool_calls_run_concurrently(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "both")

    def timed(name: str) -> str:
        return f"date +%s.%N > {name}.start; sleep 0.4; date +%s.%N > {name}.end; echo {name}"

    calls = [tool_use("bash", {"command": timed("a")}, "a"), tool_use("bash", {"command": timed("b")}, "b")]
    model = ScriptedModel([calls, [text("done")]])
    assert (await world.t.sessions.run(sid, model=model)).stop_reason == "end_turn"
    async with world.t.sessions.actor(sid) as actor:
        sandbox = await actor.sandbox()
        stamp = {n: float(await sandbox.read_file(n)) for n in ("a.start", "a.end", "b.start", "b.end")}
    assert stamp["a.start"] < stamp["b.end"] and stamp["b.start"] < stamp["a.end"]  # the two overlapped
    results = await world.of(sid, "agent.tool_result")
    assert sorted(r["content"].strip() for r in results) == ["a", "b"]
