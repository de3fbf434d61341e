"""Scheduled wake-ups on both engines: stored durably, logged as ``span.wakeup_scheduled``, fired by a worker
as a ``user.message`` that says why, exactly once per due time (racing firers included), once after downtime,
and never for a session that takes no input."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from openma import ConfigError, Conflict, InvalidInput, Worker
from openma.core import wakeups
from openma.ports.sessions.runnable import MAX_WAKEUPS_PER_SESSION, ScheduledWakeup
from openma.testing import ScriptedModel
from tests.turn_support import World, engine_settings, open_world, poll, text

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in open_world(engine_settings(engine, tmp_path, request)):
        yield w


def wakeup(kind: str = "every", *, due: datetime = NOW, every: float | None = 1.0) -> ScheduledWakeup:
    return ScheduledWakeup("wak_x", "tnt_x", "ses_x", kind, due, every, None, "p", 0, None, NOW)  # type: ignore[arg-type]


def test_a_missed_interval_fires_once_then_resumes_its_grid() -> None:
    w = wakeup(every=1.0)
    assert wakeups.next_due(w, NOW) == NOW + timedelta(seconds=1)
    later = NOW + timedelta(seconds=30, milliseconds=400)  # thirty due times missed
    assert wakeups.next_due(w, later) == NOW + timedelta(seconds=31)
    assert wakeups.next_due(wakeup("at", every=None), later) is None


@given(st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=True), st.integers()))
def test_any_bad_interval_is_invalid_input(value: object) -> None:
    try:
        kind, first, step, _ = wakeups.plan(NOW, every=value)  # type: ignore[arg-type]
    except InvalidInput:
        return
    assert kind == "every" and step is not None and step >= wakeups.MIN_EVERY and first > NOW


def test_schedules_are_checked() -> None:
    for kwargs in (
        {},
        {"delay": 1, "every": 2},
        {"at": NOW, "cron": "* * * * *"},
        {"at": datetime(2026, 1, 1)},  # naive
        {"delay": -1},
        {"every": 0.1},
        {"cron": ""},
    ):
        with pytest.raises(InvalidInput):
            wakeups.plan(NOW, **kwargs)  # type: ignore[arg-type]
    assert wakeups.plan(NOW, delay=5)[:2] == ("at", NOW + timedelta(seconds=5))
    assert wakeups.plan(NOW, every=timedelta(minutes=1), at=NOW)[:3] == ("every", NOW, 60.0)


def test_cron_without_croniter_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_croniter(name: str, *args: object) -> object:
        if name == "croniter":
            raise ImportError(name)
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(wakeups.importlib, "import_module", no_croniter)
    with pytest.raises(ConfigError, match="pip install croniter"):
        wakeups.plan(NOW, cron="*/5 * * * *")


def test_cron_schedules_fire_at_the_next_named_time_and_a_missed_one_once() -> None:
    kind, first, every, cron = wakeups.plan(NOW + timedelta(minutes=2, seconds=5), cron="*/5 * * * *")
    assert (kind, every, cron) == ("cron", None, "*/5 * * * *")
    assert first == NOW + timedelta(minutes=5)
    w = ScheduledWakeup("wak_x", "tnt_x", "ses_x", "cron", first, None, cron, "p", 0, None, NOW)
    # fired an hour late (downtime): the next due time is the first one after now, not every missed one
    assert wakeups.next_due(w, NOW + timedelta(hours=1, minutes=1)) == NOW + timedelta(hours=1, minutes=5)
    with pytest.raises(InvalidInput):
        wakeups.plan(NOW, cron="not a cron")


async def test_schedule_list_cancel_and_the_span(world: World) -> None:
    sid = await world.session()
    at = datetime.now(UTC) + timedelta(hours=1)
    one = await world.t.sessions.schedule_wakeup(sid, at=at, prompt="check the build")
    every = await world.t.sessions.schedule_wakeup(sid, every=60)
    assert one.kind == "at" and one.prompt == "check the build" and abs(one.next_due - at) < timedelta(seconds=1)
    assert [w.id for w in await world.t.sessions.list_wakeups(sid)] == [every.id, one.id]
    spans = await world.of(sid, "span.wakeup_scheduled")
    assert [(s["schedule_id"], s["kind"]) for s in spans] == [(one.id, "at"), (every.id, "every")]
    assert await world.t.sessions.cancel_wakeup(sid, one.id) is True
    assert await world.t.sessions.cancel_wakeup(sid, one.id) is False
    assert [w.id for w in await world.t.sessions.list_wakeups(sid)] == [every.id]
    with pytest.raises(InvalidInput):
        await world.t.sessions.schedule_wakeup(sid, every=60, prompt="")
    with pytest.raises(InvalidInput):
        await world.t.sessions.cancel_wakeup(sid, "not-an-id")


async def test_a_session_has_a_bounded_number_of_wakeups(world: World) -> None:
    sid = await world.session()
    for _ in range(MAX_WAKEUPS_PER_SESSION - 1):  # one more below
        await world.t.sessions.schedule_wakeup(sid, delay=3600)
    await world.t.sessions.schedule_wakeup(sid, delay=3600)
    with pytest.raises(Conflict):
        await world.t.sessions.schedule_wakeup(sid, delay=3600)
    await world.t.sessions.unfenced_set_status(sid, "terminated")
    other = await world.session()
    await world.t.sessions.unfenced_set_status(other, "terminated")
    with pytest.raises(Conflict):
        await world.t.sessions.schedule_wakeup(other, delay=1)


async def test_racing_firers_fire_a_due_time_once(world: World) -> None:
    sid = await world.session()
    store = world.t.sessions.store
    w = await world.t.sessions.schedule_wakeup(sid, every=5, at=datetime.now(UTC) - timedelta(seconds=1))
    won: list[bool] = []

    async def fire() -> None:
        won.append(await wakeups.fire(store, w, datetime.now(UTC)))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(fire)
    assert sorted(won) == [False, False, False, True]
    pending = (await world.t.sessions.pending(sid)).items
    assert len(pending) == 1 and pending[0].data["metadata"]["schedule_id"] == w.id
    [stored] = await world.t.sessions.list_wakeups(sid)
    assert stored.fired == 1 and stored.next_due > datetime.now(UTC)


async def test_a_worker_fires_a_due_wakeup_and_the_turn_sees_why(world: World) -> None:
    sid = await world.session()
    model = ScriptedModel([[text("woke up")]])
    async with Worker(world.oma, model=model, poll_interval=0.05) as worker:
        w = await world.t.sessions.schedule_wakeup(sid, delay=0.2, prompt="time to check the build")
        await _until(lambda: len(model.requests) == 1)
        await worker.wait_idle(timeout=20)
        assert worker.state.wakeups_fired == 1
    [message] = await world.of(sid, "user.message")
    assert message["content"] == [text("time to check the build")]
    meta = message["metadata"]
    assert meta["harness"] == "schedule" and meta["kind"] == "wakeup" and meta["schedule_id"] == w.id
    assert meta["wakeup_kind"] == "at" and meta["scheduled_at"] <= meta["fired_at"]
    assert model.requests[0].messages[-1]["content"] == [text("time to check the build")]
    assert await world.t.sessions.list_wakeups(sid) == []  # a one-shot is gone once fired


async def test_an_interval_missed_during_downtime_fires_once(world: World) -> None:
    sid = await world.session()
    start = datetime.now(UTC) - timedelta(seconds=20)  # twenty due times passed while no worker ran
    w = await world.t.sessions.schedule_wakeup(sid, every=1, at=start)
    model = ScriptedModel([[text("one")], [text("two")], [text("three")]])
    async with Worker(world.oma, model=model, poll_interval=0.05) as worker:
        await _until(lambda: worker.state.wakeups_fired >= 1)
        await worker.wait_idle(timeout=20)
        first = worker.state.wakeups_fired
    [stored] = await world.t.sessions.list_wakeups(sid)
    messages = await world.of(sid, "user.message")
    assert first <= 2 and len(messages) == stored.fired == first  # the backlog was one firing, not twenty
    assert messages[0]["metadata"]["schedule_id"] == w.id
    scheduled = datetime.fromisoformat(messages[0]["metadata"]["scheduled_at"])
    assert abs(scheduled - start) < timedelta(milliseconds=2)  # the first missed time, named once
    assert stored.next_due > datetime.now(UTC) - timedelta(seconds=1)


async def test_a_wakeup_of_a_terminated_session_is_removed_not_fired(world: World) -> None:
    sid = await world.session()
    await world.t.sessions.schedule_wakeup(sid, every=1, at=datetime.now(UTC) - timedelta(seconds=1))
    await world.t.sessions.unfenced_set_status(sid, "terminated")
    model = ScriptedModel([])
    async with Worker(world.oma, model=model, poll_interval=0.05) as worker:
        await worker.wait_idle(timeout=20)
    assert await world.t.sessions.list_wakeups(sid) == [] and model.requests == []
    assert await world.of(sid, "user.message") == []


async def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async def holds() -> bool:
        return check()

    await poll(holds, timeout=timeout)
