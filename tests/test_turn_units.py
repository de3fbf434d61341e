"""The turn loop's parts on their own: typed events, built-in tools, the conversation builder and its
compaction, the scripted model, retries and the stall watchdog."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openma import InvalidInput, ModelError, events
from openma.core.turns import RetryPolicy
from openma.core.turns.builtins import MAX_TOOL_RESULT_CHARS, ToolOutcome, capped, run_builtin
from openma.core.turns.conversation import build_messages, estimate_tokens, plan_compaction
from openma.core.turns.retry import call_with_retries
from openma.core.turns.toolset import agent_tools
from openma.models import Event
from openma.ports.model import Finish, ModelRequest, TextDelta, ThinkingDelta, ToolUse, Usage
from openma.ports.sandbox import ExecResult
from openma.testing import Scripted, ScriptedModel

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- typed events

SAMPLES: list[dict[str, Any]] = [
    {"type": "user.message", "content": [{"type": "text", "text": "hi"}]},
    {"type": "user.interrupt"},
    {"type": "user.tool_confirmation", "tool_use_id": "evt_1", "result": "deny", "deny_message": "no"},
    {"type": "user.custom_tool_result", "custom_tool_use_id": "evt_1", "content": "ok", "is_error": False},
    {"type": "agent.message", "content": [{"type": "text", "text": "x"}], "message_id": "msg_1", "interrupted": True},
    {"type": "agent.thinking", "text": "hmm", "signature": "sig"},
    {
        "type": "agent.tool_use",
        "id": "evt_2",
        "name": "bash",
        "input": {"command": "ls"},
        "evaluated_permission": "ask",
    },
    {"type": "agent.tool_result", "tool_use_id": "evt_2", "content": "a\n", "is_error": False, "truncated": True},
    {"type": "agent.custom_tool_use", "id": "evt_3", "name": "lookup", "input": {}},
    {"type": "agent.mcp_tool_use", "id": "evt_4", "mcp_server_name": "gh", "name": "mcp_gh_call", "input": {}},
    {"type": "agent.mcp_tool_result", "mcp_tool_use_id": "evt_4", "content": "r"},
    {
        "type": "agent.thread_context_compacted",
        "original_message_count": 9,
        "compacted_message_count": 3,
        "summary": [{"type": "text", "text": "s"}],
        "replaced_range": {"start_seq": 1, "end_seq": 7},
        "trigger": "auto",
        "pre_tokens": 100,
    },
    {"type": "session.status_running"},
    {"type": "session.status_idle", "stop_reason": {"type": "end_turn"}},
    {"type": "session.status_rescheduled", "reason": "r"},
    {"type": "session.status_terminated", "reason": "r"},
    {"type": "session.error", "error": {"type": "model_error", "message": "m", "retry_status": "non_retryable"}},
    {"type": "session.warning", "source": "recovery", "message": "m", "details": {}},
    {"type": "span.model_request_start", "id": "evt_5", "model": "m"},
    {
        "type": "span.model_request_end",
        "model": "m",
        "model_request_start_id": "evt_5",
        "model_usage": {"input_tokens": 1, "output_tokens": 2},
        "finish_reason": "end_turn",
        "final_text_length": 1,
        "is_error": False,
    },
]


@pytest.mark.parametrize("data", SAMPLES, ids=[s["type"] for s in SAMPLES])
def test_every_catalogue_type_round_trips(data: dict[str, Any]) -> None:
    typed = events.from_dict(data)
    assert not isinstance(typed, events.UnknownEvent) and typed.type == data["type"]
    assert typed.to_dict() == data
    assert {s["type"] for s in SAMPLES} == set(events.EVENT_TYPES)


MESSAGE_FIELDS = {"type", "content", "id", "message_id", "interrupted", "extra"}


@settings(max_examples=60, deadline=None)
@given(extra=st.dictionaries(st.text(min_size=1).filter(lambda k: k not in MESSAGE_FIELDS), st.integers()))
def test_unknown_fields_and_types_survive_a_round_trip(extra: dict[str, Any]) -> None:
    data = {"type": "agent.message", "content": [], **extra}
    assert events.from_dict(data).to_dict() == data
    other = {"type": "vendor.thing", **extra}
    typed = events.from_dict(other)
    assert isinstance(typed, events.UnknownEvent) and typed.to_dict() == other


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "user.message", "content": "plain"},
        {"type": "user.tool_confirmation", "tool_use_id": "x", "result": "maybe"},
        {"type": "agent.tool_use", "name": "bash", "input": []},
        {"type": "agent.tool_result", "tool_use_id": 3, "content": ""},
        {"type": "span.model_request_end", "model": "m"},
        {"type": 5},
        {"type": "agent.tool_result", "tool_use_id": "x", "content": "", "is_error": "yes"},
    ],
)
def test_bad_payloads_are_invalid_input(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        events.from_dict(bad)


def test_typed_events_build_what_hosts_post() -> None:
    message = events.UserMessage(content=[events.text("hi")])
    assert message.to_dict() == {"type": "user.message", "content": [{"type": "text", "text": "hi"}]}
    with pytest.raises(InvalidInput):
        events.UserToolConfirmation(tool_use_id="x", result="ok")  # type: ignore[arg-type]


# -- built-in tools


class FakeSandbox:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commands: list[str] = []
        self.result = ExecResult(0, "out\n", "")

    async def exec(self, cmd: str, *, timeout: float = 120.0) -> ExecResult:
        self.commands.append(cmd)
        return self.result

    async def read_file(self, path: str) -> bytes:
        if path not in self.files:
            raise InvalidInput(f"no file {path}", field="path")
        return self.files[path]

    async def write_file(self, path: str, data: bytes) -> None:
        self.files[path] = data


async def test_tool_inputs_are_checked_and_failures_are_results() -> None:
    sandbox = FakeSandbox()
    assert (await run_builtin(sandbox, "bash", {})).is_error
    assert (await run_builtin(sandbox, "bash", {"command": "ls", "timeout": "soon"})).is_error
    assert (await run_builtin(sandbox, "read", {"file_path": "missing"})).is_error
    assert (await run_builtin(sandbox, "glob", {"pattern": "$(rm -rf /)"})).is_error
    assert (await run_builtin(sandbox, "nope", {})).is_error
    assert sandbox.commands == []
    sandbox.result = ExecResult(2, "", "boom\n")
    failed = await run_builtin(sandbox, "bash", {"command": "false", "timeout": 5000})
    assert failed.is_error and "boom" in failed.content and "[exit code 2]" in failed.content
    sandbox.files["a.txt"] = b"a a\n"
    twice = await run_builtin(sandbox, "edit", {"file_path": "a.txt", "old_string": "a", "new_string": "b"})
    assert twice.is_error and "2 times" in twice.content
    ok = await run_builtin(
        sandbox, "edit", {"file_path": "a.txt", "old_string": "a", "new_string": "b", "replace_all": True}
    )
    assert not ok.is_error and sandbox.files["a.txt"] == b"b b\n"


async def test_long_output_is_capped_and_marked() -> None:
    sandbox = FakeSandbox()
    sandbox.result = ExecResult(0, "x" * (MAX_TOOL_RESULT_CHARS + 10), "")
    out = await run_builtin(sandbox, "bash", {"command": "yes"})
    assert (
        out.truncated and len(out.content) < MAX_TOOL_RESULT_CHARS + 100 and "11 more characters" in out.content
    )  # the 10, and the newline it ended with
    assert capped("short") == ToolOutcome("short")
    sandbox.files["big.txt"] = "".join(f"line {i}\n" for i in range(10)).encode()
    part = await run_builtin(sandbox, "read", {"file_path": "big.txt", "offset": 3, "limit": 2})
    assert part.content.startswith("     3\tline 2\n     4\tline 3\n") and "6 more lines" in part.content


def test_agent_tools_read_the_toolset_and_custom_tools() -> None:
    tools = agent_tools(
        [
            {
                "type": "agent_toolset_20260401",
                "default_config": {"enabled": False},
                "configs": [{"name": "bash", "enabled": True, "permission_policy": {"type": "always_ask"}}],
            },
            {"type": "custom", "name": "lookup", "description": "d", "input_schema": {"type": "object"}},
        ]
    )
    assert {n: (s.kind, s.permission) for n, s in tools.items()} == {
        "bash": ("builtin", "always_ask"),
        "lookup": ("custom", "always_allow"),
    }
    with pytest.raises(InvalidInput):
        agent_tools([{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "never"}}}])


# -- the conversation


def _log(*payloads: dict[str, Any]) -> list[Event]:
    return [Event(f"evt_{i}", p["type"], i, NOW, {"id": f"evt_{i}", **p}) for i, p in enumerate(payloads, start=1)]


def _say(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def test_messages_alternate_and_pair_tool_calls() -> None:
    log = _log(
        _say("a"),
        {"type": "span.model_request_start", "model": "m"},
        {"type": "agent.thinking", "text": "t", "signature": "s"},
        {"type": "agent.message", "content": [{"type": "text", "text": "b"}]},
        {"type": "agent.tool_use", "id": "u1", "name": "bash", "input": {}},
        {"type": "agent.custom_tool_use", "id": "u2", "name": "c", "input": {}},
        {"type": "span.model_request_end", "model": "m", "model_request_start_id": "evt_2"},
        {"type": "agent.tool_result", "tool_use_id": "u1", "content": "r", "is_error": True},
        {"type": "user.custom_tool_result", "custom_tool_use_id": "u2", "content": [{"type": "text", "text": "c"}]},
    )
    assert build_messages(log) == [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "text", "text": "b"},
                {"type": "tool_use", "id": "u1", "name": "bash", "input": {}},
                {"type": "tool_use", "id": "u2", "name": "c", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "u1", "content": "r", "is_error": True},
                {"type": "tool_result", "tool_use_id": "u2", "content": [{"type": "text", "text": "c"}]},
            ],
        },
    ]


def test_a_history_over_budget_is_compacted_at_a_clean_cut() -> None:
    payloads: list[dict[str, Any]] = []
    for i in range(20):
        payloads += [
            _say(f"question {i} " + "x" * 400),
            {"type": "agent.message", "content": [{"type": "text", "text": f"answer {i}"}]},
        ]
    log = _log(*payloads)
    assert plan_compaction(log, budget_tokens=10_000) is None
    plan = plan_compaction(log, budget_tokens=1000)
    assert plan is not None and plan["type"] == "agent.thread_context_compacted"
    events.from_dict(plan)  # a valid catalogue event
    end = plan["replaced_range"]["end_seq"]
    assert log[end].type == "user.message"  # the kept part starts at a turn
    compacted = [*_log(*payloads), Event("evt_99", plan["type"], 99, NOW, plan)]
    messages = build_messages(compacted)
    last_replaced = log[end - 1].data["content"][0]["text"]
    assert last_replaced in messages[0]["content"][0]["text"]  # the summary names what it replaced
    assert estimate_tokens(messages) <= 1000
    assert plan["original_message_count"] > plan["compacted_message_count"] == len(messages)


# -- the scripted model, retries, the stall watchdog


async def test_scripted_model_streams_in_deltas_and_records_requests() -> None:
    model = ScriptedModel(
        [
            [{"type": "thinking", "thinking": "abcdef", "signature": "s"}, {"type": "text", "text": "hello world"}],
            [{"type": "tool_use", "id": "t", "name": "bash", "input": {"command": "ls"}}],
            ModelError("busy", retryable=True),
        ]
    )
    request = ModelRequest(model="m", messages=[{"role": "user", "content": "hi"}], system="s")
    got = [e async for e in model.stream(request)]
    assert [type(e) for e in got].count(TextDelta) == 3 and "".join(
        e.text for e in got if isinstance(e, TextDelta)
    ) == "hello world"
    assert [e.signature for e in got if isinstance(e, ThinkingDelta)][-1] == "s"
    assert isinstance(got[-2], Usage) and got[-1] == Finish("end_turn", "end_turn")
    tool = [e async for e in model.stream(request)]
    assert tool[0] == ToolUse("t", "bash", {"command": "ls"}) and tool[-1].reason == "tool_use"  # type: ignore[union-attr]
    with pytest.raises(ModelError):
        _ = [e async for e in model.stream(request)]
    with pytest.raises(ModelError):  # out of responses
        _ = [e async for e in model.stream(request)]
    assert len(model.requests) == 4 and model.requests[0] is request


async def test_retries_back_off_and_stop_at_the_limit() -> None:
    calls: list[int] = []
    waits: list[float] = []

    async def flaky(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 3:
            raise ModelError("busy", retryable=True)
        return "ok"

    policy = RetryPolicy(attempts=4, initial=0.001, max_wait=0.002)
    assert await call_with_retries(policy, flaky, on_retry=lambda e, n, w: waits.append(w)) == "ok"
    assert calls == [1, 2, 3] and len(waits) == 2 and all(0 <= w <= 0.002 for w in waits)

    async def fatal(attempt: int) -> str:
        calls.append(attempt)
        raise ModelError("bad", retryable=False)

    calls.clear()
    with pytest.raises(ModelError):
        await call_with_retries(policy, fatal)
    assert calls == [1]


async def test_a_stalled_stream_is_a_retryable_error(tmp_path: Path) -> None:
    from openma import Platform, Settings
    from openma.core.turns import TurnOptions

    settings = Settings(sqlite_path=str(tmp_path / "db"), blob_url=f"file://{tmp_path}/b")
    async with Platform.open(settings) as oma:
        t = oma.tenant(await oma.tenants.create(name="stall"))
        agent = await t.agents.create(name="a", model="m")
        env = await t.environments.create(name="e")
        sid = (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id
        await t.sessions.post(sid, [_say("hi")])
        model = ScriptedModel([Scripted([{"type": "text", "text": "slow"}], delay=5), [{"type": "text", "text": "ok"}]])
        options = TurnOptions(stall_timeout=0.2, retry=RetryPolicy(attempts=2, initial=0.001, max_wait=0.001))
        with anyio.fail_after(5):
            result = await t.sessions.run(sid, model=model, options=options, retry=options.retry)
        assert result.stop_reason == "end_turn" and len(model.requests) == 2
        first = (await t.sessions.events(sid, types=["span.model_request_end"])).items[0].data
        assert first["is_error"] and first["retryable"] and "stalled" in first["error_message"]


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_tool_turn_runs_on_trio(tmp_path: Path, anyio_backend: str) -> None:
    from openma import Platform, Settings

    settings = Settings(
        sqlite_path=str(tmp_path / "db"), blob_url=f"file://{tmp_path}/b", local_sandbox_root=str(tmp_path / "sb")
    )
    async with Platform.open(settings) as oma:
        t = oma.tenant(await oma.tenants.create(name="trio"))
        agent = await t.agents.create(name="a", model="m", tools=[{"type": "agent_toolset_20260401"}])
        env = await t.environments.create(name="e")
        sid = (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id
        await t.sessions.post(sid, [_say("hi")])
        use = {"type": "tool_use", "id": "t", "name": "bash", "input": {"command": "echo trio"}}
        model = ScriptedModel([[use], ModelError("busy", retryable=True), [{"type": "text", "text": "ok"}]])
        retry = RetryPolicy(attempts=2, initial=0.001, max_wait=0.001)
        result = await t.sessions.run(sid, model=model, retry=retry)
        assert result.stop_reason == "end_turn"
        (res,) = (await t.sessions.events(sid, types=["agent.tool_result"])).items
        assert res.data["content"].strip() == "trio"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(["bash", "read", "write", "edit", "glob", "grep", "other"]),
    input=st.dictionaries(
        st.sampled_from(
            [
                "command",
                "timeout",
                "file_path",
                "offset",
                "limit",
                "content",
                "old_string",
                "new_string",
                "replace_all",
                "pattern",
                "path",
                "glob",
                "x",
            ]
        ),
        JSON,
        max_size=5,
    ),
)
def test_any_tool_input_gives_an_outcome_never_an_exception(name: str, input: dict[str, Any]) -> None:
    sandbox = FakeSandbox()
    sandbox.files["a.txt"] = b"hello\n"
    outcome = anyio.run(run_builtin, sandbox, name, input)
    assert isinstance(outcome, ToolOutcome) and isinstance(outcome.content, str)
