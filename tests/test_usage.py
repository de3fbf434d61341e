"""The usage ledger: any sequence of retried writes sums to the same totals (hypothesis), slices derived from
events and from the sandbox meter, and the ledger fed by real turns and sandboxes on both engines. The
store's contract runs in tests/test_usage_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openma import Platform, Settings
from openma.adapters.sql.backend import SqlStoreBackend
from openma.core.usage import SandboxMeter, slices_from_events
from openma.errors import InvalidInput
from openma.models import Event
from openma.ports.tenancy import TenantRef
from openma.ports.usage import UsageSlice
from openma.testing import ScriptedModel
from openma.testing.usage import SESSION, T0, tokens
from tests.fixtures.engines import open_sqlite_backend
from tests.turn_support import World, engine_settings, open_world, text, tool_use


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- any sequence of duplicated and retried writes sums to the same totals


@pytest.fixture(scope="module")
def sqlite_ledger(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[anyio.from_thread.BlockingPortal, SqlStoreBackend]]:
    path = tmp_path_factory.mktemp("usage") / "u.db"
    with anyio.from_thread.start_blocking_portal() as portal:
        backend = portal.call(open_sqlite_backend, path)
        yield portal, backend
        portal.call(backend.aclose)


_SLICES = st.builds(
    lambda i, n, ms, kind: (
        tokens(f"k{i}", input_tokens=n, output_tokens=n // 2)
        if kind == "model"
        else UsageSlice(key=f"k{i}", session_id=SESSION, kind=kind, at=T0, duration_ms=ms)
    ),
    st.integers(0, 30),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.sampled_from(["model", "sandbox", "exec", "session"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.lists(_SLICES, max_size=8), max_size=12), retries=st.lists(st.integers(0, 11), max_size=6))
def test_any_sequence_of_retried_writes_sums_to_the_same_totals(
    sqlite_ledger: tuple[anyio.from_thread.BlockingPortal, SqlStoreBackend],
    writes: list[list[UsageSlice]],
    retries: list[int],
) -> None:
    portal, backend = sqlite_ledger
    first: dict[str, UsageSlice] = {}  # what the ledger must hold: the first slice written under each key
    for batch in writes:
        for item in batch:
            first.setdefault(item.key, item)
    sequence = list(writes) + [writes[i] for i in retries if i < len(writes)]  # retried batches, any order
    sequence = sequence[::-1] if len(retries) % 2 else sequence

    async def run() -> None:
        tenant = await backend.tenants.create(name="t")
        usage = backend.usage(TenantRef(tenant.id))
        written: dict[str, UsageSlice] = {}
        for batch in sequence:
            await usage.record(batch)
            for item in batch:
                written.setdefault(item.key, item)
        summary = await usage.summary()
        assert summary.of("model").slices + sum(summary.of(k).slices for k in ("sandbox", "exec", "session")) == len(
            written
        )
        assert set(written) == set(first)  # the same keys, whichever order the writes came in
        for kind in ("model", "sandbox", "exec", "session"):
            expected = [s for s in written.values() if s.kind == kind]
            total = summary.of(kind)
            assert total.slices == len(expected)
            assert total.input_tokens == sum(s.input_tokens for s in expected)
            assert total.duration_ms == sum(s.duration_ms for s in expected)
        exported: list[str] = []
        cursor = None
        while True:
            page = await usage.export(cursor=cursor, limit=7)
            exported += [i.slice.key for i in page.items]
            cursor = page.cursor
            if not page.has_more:
                break
        assert sorted(exported) == sorted(written)

    portal.call(run)


# -- slices derived from events, and the sandbox meter


def _event(seq: int, type_: str, at_ms: int, **data: object) -> Event:
    from openma.core.clock import ms_to_datetime

    return Event(id=f"evt_{seq:026d}", type=type_, seq=seq, created_at=ms_to_datetime(at_ms), data=dict(data))


def test_slices_from_events_are_keyed_by_event_ids() -> None:
    usage = {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1}
    events = [
        _event(1, "session.status_running", 1_000),
        _event(2, "span.model_request_end", 1_500, model="m-1", model_usage=usage),
        _event(3, "span.model_request_end", 1_600, model="m-1", model_usage={"input_tokens": 0}),  # nothing used
        _event(
            4, "span.model_request_end", 1_700, model="m-1", model_usage={"input_tokens": True, "output_tokens": -4}
        ),
        _event(5, "session.status_idle", 3_250),
        _event(6, "session.status_idle", 4_000),  # no running before it: nothing
    ]
    slices = slices_from_events(SESSION, events)
    assert [(s.key, s.kind) for s in slices] == [
        ("model:evt_" + "2".zfill(26), "model"),
        (f"session:{events[0].id}", "session"),
    ]
    model = slices[0]
    assert (model.input_tokens, model.output_tokens, model.cache_read_tokens, model.cache_write_tokens) == (7, 3, 2, 1)
    assert model.name == "m-1"
    assert slices[1].duration_ms == 2_250
    assert slices_from_events(SESSION, events) == slices


def test_sandbox_meter_periods() -> None:
    meter = SandboxMeter()
    meter.started("tnt_a", SESSION, "sbx-1", "local", 1_000)
    meter.ran("sbx-1", 120.4)
    meter.ran("sbx-1", float("nan"))
    meter.ran("sbx-unknown", 5)
    meter.checkpoint(2_000)
    meter.ran("sbx-1", 30)
    meter.stopped("sbx-1", 2_500)
    meter.stopped("sbx-1", 9_000)  # already stopped: nothing
    taken = meter.take()
    assert list(taken) == ["tnt_a"]
    keyed = {s.key: s for s in taken["tnt_a"]}
    assert {k: s.duration_ms for k, s in keyed.items()} == {
        "sandbox:sbx-1:1000": 1_000,
        "exec:sbx-1:1000": 120,
        "sandbox:sbx-1:2000": 500,
        "exec:sbx-1:2000": 30,
    }
    assert meter.take() == {}
    assert meter.open_periods == 0


# -- the ledger fed by real turns (both engines)


@pytest.fixture
async def world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in open_world(engine_settings(engine, tmp_path, request)):
        yield w


@pytest.mark.anyio
async def test_turns_record_tokens_session_and_sandbox_time(world: World) -> None:
    sid = await world.session()
    model = ScriptedModel(
        [
            [text("listing"), tool_use("bash", {"command": "sleep 0.2; echo hi"})],
            [text("done")],
        ]
    )
    await world.say(sid, "go")
    result = await world.t.sessions.run(sid, model=model)
    assert result.stop_reason == "end_turn"
    usage = world.t.usage
    summary = await usage.summary(session_id=sid)
    tokens_used = summary.of("model", "m-1")
    assert tokens_used.slices == 2
    assert tokens_used.input_tokens == result.usage.input_tokens
    assert tokens_used.output_tokens == result.usage.output_tokens
    assert summary.of("session").slices == 1
    assert summary.of("session").duration_ms > 0
    assert summary.of("exec").duration_ms >= 200  # the command's own time, from the orchestrator
    assert summary.of("sandbox").duration_ms >= summary.of("exec").duration_ms
    # Derived from the log: recording the turn again, or backfilling the session, counts nothing twice.
    assert await usage.record_events(sid, result.events) == 0
    assert await usage.backfill(sid) == 0
    assert (await usage.summary(session_id=sid)).of("model") == summary.of("model")
    window = await usage.summary(since=result.events[0].created_at - timedelta(seconds=1))
    assert window.of("model").slices == 2


@pytest.mark.anyio
async def test_backfill_recovers_what_a_turn_did_not_record(world: World) -> None:
    sid = await world.session(tools=[])
    await world.say(sid, "hi")
    async with world.t.sessions.actor(sid) as actor:  # a turn run without t.sessions.run records nothing
        from openma.core.turns import run_turn

        await run_turn(actor, ScriptedModel([[text("hello")]]), telemetry=world.telemetry)
    usage = world.t.usage
    assert (await usage.summary()).totals == []
    assert await usage.backfill(sid) == 2  # the model call and the running time
    assert await usage.backfill(sid) == 0
    with pytest.raises(InvalidInput):
        await usage.summary(session_id="not-an-id")


@pytest.mark.anyio
async def test_the_last_sandbox_period_is_written_when_the_platform_closes(tmp_path: Path) -> None:
    settings = Settings(
        sqlite_path=str(tmp_path / "o.db"),
        blob_url=f"file://{tmp_path}/blobs",
        local_sandbox_root=str(tmp_path / "sandboxes"),
        telemetry_sinks="none",
    )
    async for world in open_world(settings):
        sid = await world.session()
        await world.say(sid, "go")
        model = ScriptedModel([[tool_use("bash", {"command": "echo hi"})], [text("done")]])
        await world.t.sessions.run(sid, model=model)
        tenant_id = world.tenant_id
        during = (await world.t.usage.summary(session_id=sid)).of("sandbox")
        assert during.slices == 1  # the period up to the end of the turn
    async with Platform.open(settings) as oma:
        after = (await oma.tenant(tenant_id).usage.summary(session_id=sid)).of("sandbox")
    assert after.slices == 2  # and the one from then until the sandbox was released at close
    assert after.duration_ms >= during.duration_ms
