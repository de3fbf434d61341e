"""A turn whose own writes fail is not a model error; an answer a dead runner left unfinished is still owed.

The store's writes are made to fail on the actor (``StorageUnavailable``, as while Postgres restarts, and
``LeaseLost``), on both engines: the turn raises the store's error as itself, logs no ``session.error``,
closes what it can, and the next run (or a worker, after its backoff) recovers and answers the input once.
A model adapter that raises an openma error other than ``ModelError`` is still a model error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openma import LeaseLost, StorageUnavailable, Worker
from openma.core.actor import SessionActor
from openma.core.turns import RetryPolicy
from openma.core.turns.pending import cut_short
from openma.models import Event
from openma.testing import ScriptedModel
from tests.turn_support import World, engine_settings, open_world, text, tool_use

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(initial=0.01, max_wait=0.01)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in open_world(engine_settings(engine, tmp_path, request)):
        yield w


def outage() -> Exception:
    return StorageUnavailable("the database is restarting (injected)")


def failing(
    monkeypatch: pytest.MonkeyPatch, method: str, times: int, error: Callable[[], Exception] = outage
) -> list[int]:
    """Make ``SessionActor.<method>`` raise ``error()`` on its next ``times`` calls, then behave again;
    returns a one-item list counting the failures raised."""
    original = getattr(SessionActor, method)
    raised = [0]

    async def flaky(self: SessionActor, *args: Any, **kwargs: Any) -> Any:
        if raised[0] < times:
            raised[0] += 1
            raise error()
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SessionActor, method, flaky)
    return raised


async def log_of(world: World, sid: str) -> list[Event]:
    return list((await world.t.sessions.events(sid, limit=1000)).items)


def finished_answers(log: list[Event]) -> list[Event]:
    return [e for e in log if e.type == "agent.message" and not e.data.get("interrupted")]


async def test_a_failed_stream_write_raises_the_store_error_not_a_model_error(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    raised = failing(monkeypatch, "append_stream", 1)
    model = ScriptedModel([[text("a long answer that streams")]])
    with pytest.raises(StorageUnavailable):
        await world.t.sessions.run(sid, model=model, retry=FAST)
    assert raised == [1] and len(model.requests) == 1  # not retried as if the model had failed
    log = await log_of(world, sid)
    assert "session.error" not in [e.type for e in log]
    (end,) = [e.data for e in log if e.type == "span.model_request_end"]
    assert end["is_error"] and end["retryable"] and end["error_message"].startswith("storage_unavailable")
    assert [s.status for s in (await world.t.sessions.streams(sid, status=None)).items] == ["aborted"]
    (call,) = world.telemetry.of("model.call")
    assert call["outcome"] == "aborted" and call["error"] == "storage_unavailable"
    assert (await world.t.sessions.get(sid)).status == "running"  # left for the next holder
    # The next run recovers and answers the input, which was promoted once.
    again = ScriptedModel([[text("the answer")]])
    result = await world.t.sessions.run(sid, model=again)
    assert result.stop_reason == "end_turn"
    log = await log_of(world, sid)
    assert [e.type for e in log].count("user.message") == 1
    assert [m.data["content"] for m in finished_answers(log)] == [[text("the answer")]]
    assert again.requests[0].messages[-1]["role"] == "user"


async def test_when_the_cleanup_fails_too_the_store_error_is_raised_and_recovery_closes_the_stream(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    down = [False]  # the outage starts with the first stream write, and lasts

    def wrap(method: str) -> None:
        original = getattr(SessionActor, method)

        async def flaky(self: SessionActor, *args: Any, **kwargs: Any) -> Any:
            if method == "append_stream":
                down[0] = True
            if down[0]:
                raise outage()
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(SessionActor, method, flaky)

    for method in ("append_stream", "finalize_stream", "append"):
        wrap(method)
    with pytest.raises(StorageUnavailable):
        await world.t.sessions.run(sid, model=ScriptedModel([[text("cut short by the outage")]]), retry=FAST)
    cleanup = [r for r in world.telemetry.of("silent_catch") if r["where"] == "turns.step_cleanup"]
    assert [r["code"] for r in cleanup] == ["storage_unavailable"]
    assert [s.status for s in (await world.t.sessions.streams(sid, status="open")).items] == ["open"]
    monkeypatch.undo()
    again = ScriptedModel([[text("complete")]])
    result = await world.t.sessions.run(sid, model=again)
    # Recovery logged the open stream as an interrupted message; the input is still owed an answer.
    assert result.stop_reason == "end_turn" and len(again.requests) == 1
    log = await log_of(world, sid)
    cut = [e for e in log if e.type == "agent.message" and e.data.get("interrupted")]
    assert len(cut) == 1 and [m.data["content"] for m in finished_answers(log)] == [[text("complete")]]
    # The model is not shown the fragment: the request ends with the user's message.
    assert again.requests[0].messages == [{"role": "user", "content": [text("hi")]}]


async def test_a_failed_held_result_write_is_not_a_model_error(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = await world.session()
    await world.say(sid, "go")
    calls = [0]
    original = SessionActor.append

    async def down_after_the_tool(self: SessionActor, events: Any, **kwargs: Any) -> Any:
        if any(e.get("type") == "agent.tool_result" for e in events) and calls[0] == 0:
            calls[0] += 1
            raise outage()
        return await original(self, events, **kwargs)

    monkeypatch.setattr(SessionActor, "append", down_after_the_tool)
    model = ScriptedModel([[tool_use("bash", {"command": "true"})], [text("never logged")]])
    with pytest.raises(StorageUnavailable):
        await world.t.sessions.run(sid, model=model, retry=FAST)
    assert "session.error" not in await world.types(sid)
    monkeypatch.undo()
    result = await world.t.sessions.run(sid, model=ScriptedModel([[text("done")]]))
    assert result.stop_reason == "end_turn"
    log = await log_of(world, sid)
    (res,) = [e.data for e in log if e.type == "agent.tool_result"]
    assert res["is_error"]  # recovery answered the call whose result was not written
    assert [m.data["content"] for m in finished_answers(log)] == [[text("done")]]


async def test_a_lost_lease_mid_stream_writes_nothing_more(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    failing(monkeypatch, "append_stream", 1, lambda: LeaseLost("another holder took the session (injected)"))
    before = await world.types(sid)
    with pytest.raises(LeaseLost):
        await world.t.sessions.run(sid, model=ScriptedModel([[text("partial answer")]]))
    after = await world.types(sid)
    assert "span.model_request_end" not in after and "session.error" not in after
    assert len(after) > len(before)  # the promotion, the status and the span's start, then nothing


async def test_an_openma_error_from_the_model_is_still_a_model_error(world: World) -> None:
    sid = await world.session()
    await world.say(sid, "hi")
    bad = ScriptedModel([[{"type": "nonsense"}]])  # the scripted model raises InvalidInput mid-stream
    result = await world.t.sessions.run(sid, model=bad, retry=FAST)
    assert result.stop_reason == "error"
    (error,) = await world.of(sid, "session.error")
    assert error["error"]["type"] == "model_error" and error["error"]["retry_status"] == "non_retryable"


async def test_a_worker_runs_the_session_again_after_a_store_outage(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sids = [await world.session() for _ in range(3)]
    failing(monkeypatch, "append_stream", 2)
    model = ScriptedModel([[text("answered")] for _ in range(5)])
    async with Worker(world.oma, model=model, concurrency=3, poll_interval=0.05) as worker:
        for sid in sids:
            await world.say(sid, "go")
        await worker.wait_idle(timeout=30)
        state = worker.state
    assert state.errors == 2 and state.processed == 3
    outcomes = [r["outcome"] for r in world.telemetry.of("worker.turn")]
    assert outcomes.count("retry") == 2 and outcomes.count("ok") == 3
    assert not world.telemetry.of("session.error")
    for sid in sids:
        log = await log_of(world, sid)
        assert [e.type for e in log].count("user.message") == 1
        assert [m.data["content"] for m in finished_answers(log)] == [[text("answered")]], sid
        assert "session.error" not in [e.type for e in log]
        seqs = [e.seq for e in log]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def ev(seq: int, kind: str, **data: Any) -> Event:
    return Event(id=f"evt_{seq}", type=kind, seq=seq, created_at=datetime(2026, 1, 1, tzinfo=UTC), data=data)


def test_cut_short_finds_only_an_unfinished_answer_that_leaves_the_input_owed() -> None:
    user = ev(1, "user.message", content=[text("q")])
    span = ev(2, "span.model_request_start")
    cut = ev(3, "agent.message", content=[text("par")], interrupted=True)
    assert cut_short([user, span, cut]) == {"evt_3"}
    assert cut_short([user, span, ev(3, "agent.message", content=[text("full")])]) == frozenset()
    # A message the user cut is followed by the interrupt: not owed.
    assert cut_short([user, cut, ev(4, "user.interrupt")]) == frozenset()
    # After a finished step and its tool result, the cut second step is owed again.
    steps = [user, ev(2, "agent.tool_use", id="u"), ev(3, "agent.tool_result", tool_use_id="u"), cut]
    assert cut_short([*steps[:3], ev(4, "agent.message", content=[], interrupted=True)]) == {"evt_4"}
    assert cut_short([cut]) == frozenset() and cut_short([]) == frozenset()
    assert cut_short([user]) == frozenset()


_KINDS = [
    "user.message",
    "user.interrupt",
    "user.custom_tool_result",
    "agent.message",
    "agent.message!",  # interrupted
    "agent.thinking",
    "agent.tool_use",
    "agent.tool_result",
    "span.model_request_start",
    "agent.thread_context_compacted",
]


@given(st.lists(st.sampled_from(_KINDS), max_size=12))
@settings(max_examples=300, deadline=None)
def test_cut_short_on_any_log_names_only_a_trailing_fragment_after_an_input(kinds: list[str]) -> None:
    log = [
        ev(i + 1, k.rstrip("!"), content=[text("x")], **({"interrupted": True} if k.endswith("!") else {}))
        for i, k in enumerate(kinds)
    ]
    cut = cut_short(log)
    fragments = {e.id for e in log if e.type == "agent.message" and e.data.get("interrupted")}
    assert cut <= fragments
    if cut:
        first = min(e.seq for e in log if e.id in cut)
        after = [e for e in log if e.seq >= first]
        # Only fragments (and span starts) after the first: no finished answer, no interrupt.
        assert {e.type for e in after if e.id not in cut} <= {"span.model_request_start"}
        before = [e.type for e in log if e.seq < first and e.type != "span.model_request_start"]
        assert before and before[-1] in (
            "user.message",
            "user.custom_tool_result",
            "agent.tool_result",
            "agent.thread_context_compacted",
        )
    # A finished answer at the end always leaves nothing owed.
    done = ev(len(log) + 1, "agent.message", content=[text("done")])
    assert cut_short([*log, done]) == frozenset()
