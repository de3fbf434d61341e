"""Limits that do not bend: the event size cap holds whatever the spill threshold, and an archived tenant
refuses every session write the same way, spilled or not, leaving nothing behind. Both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openma import Conflict, InvalidInput, NotFound, OpenmaError, Platform, Settings
from openma.core import events as ev
from openma.core import keys
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio

SPILL = 2_000


def _settings(engine: str, engine_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    common: dict[str, Any] = {"blob_url": f"file://{tmp_path}/blobs", "event_spill_bytes": SPILL, **overrides}
    if engine == "sqlite":
        return Settings(sqlite_path=engine_url, **common)
    return Settings(postgres_url=engine_url, store_backends={"default": "pg"}, root_secret=ROOT_SECRET, **common)


@pytest.fixture
async def oma(engine: str, engine_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    async with Platform.open(_settings(engine, engine_url, tmp_path)) as platform:
        yield platform


def _msg(size: int = 10, **fields: Any) -> dict[str, Any]:
    return {"type": "agent.message", "text": "x" * size, **fields}


@pytest.mark.slow
def test_the_cap_is_fixed_even_when_a_caller_asks_for_more() -> None:
    over = _msg(ev.MAX_EVENT_BYTES)  # its JSON is just over 64 MiB
    with pytest.raises(InvalidInput, match="too large") as exc:
        ev.prepare(over, max_bytes=ev.MAX_EVENT_BYTES * 4)
    assert exc.value.details["field"] == "events"


async def test_a_larger_spill_threshold_does_not_lift_the_event_cap(
    engine: str, engine_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small cap stands in for 64 MiB, so the test does not move hundreds of megabytes.
    cap = 10_000
    monkeypatch.setattr(ev, "MAX_EVENT_BYTES", cap)
    settings = _settings(engine, engine_url, tmp_path, event_spill_bytes=cap * 100)
    async with Platform.open(settings) as platform:
        t = platform.tenant(await platform.tenants.create(name="acme"))
        agent = await t.agents.create(name="coder", model="m")
        env = await t.environments.create(name="py")
        session_id = (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id
        [fits] = await t.sessions.unfenced_append(session_id, [_msg(cap - 100)])
        for call in (t.sessions.unfenced_append, t.sessions.post):
            with pytest.raises(InvalidInput, match="too large"):
                await call(session_id, [_msg(cap + 1)])
        assert (await t.sessions.get(session_id)).last_seq == fits.seq
        assert (await t.sessions.pending(session_id)).items == []


async def test_an_archived_tenant_refuses_every_session_write_alike(oma: Platform) -> None:
    tenant = await oma.tenants.create(name="acme")
    t = oma.tenant(tenant)
    agent = await t.agents.create(name="coder", model="m")
    env = await t.environments.create(name="py")
    session_id = (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id
    await t.sessions.unfenced_append(session_id, [_msg(id="before")])
    await t.sessions.post(session_id, [_msg(id="queued")])
    stream = await t.sessions.open_stream(session_id)
    await t.sessions.append_stream(session_id, stream.id, ["hello"])
    internal = oma.blobs.for_tenant(tenant.id, internal=True)
    blobs_before = [b.key for b in await internal.list(keys.RESERVED_SEGMENT + "/sessions/")]

    await oma.tenants.archive(tenant.id)
    t = oma.tenant(tenant)  # a fresh scope, as a host builds per request
    s = t.sessions
    big = SPILL * 3
    writes: dict[str, Any] = {
        "append": lambda: s.unfenced_append(session_id, [_msg()]),
        "append spilled": lambda: s.unfenced_append(session_id, [_msg(big)]),
        "append mixed": lambda: s.unfenced_append(session_id, [_msg(), _msg(big)]),
        "post": lambda: s.post(session_id, [_msg()]),
        "post spilled": lambda: s.post(session_id, [_msg(big)]),
        "set_status": lambda: s.unfenced_set_status(session_id, "running", events=[{"type": "session.status_running"}]),
        "set_status spilled": lambda: s.unfenced_set_status(
            session_id, "running", events=[{"type": "session.status_running", "pad": "p" * big}]
        ),
        "promote": lambda: s.unfenced_promote(session_id, ["queued"]),
        "cancel": lambda: s.cancel(session_id),
        "open_stream": lambda: s.open_stream(session_id),
        "append_stream": lambda: s.append_stream(session_id, stream.id, ["more"]),
        "finalize_stream": lambda: s.finalize_stream(session_id, stream.id, "completed"),
        "session update": lambda: s.update(session_id, metadata={"k": "v"}),
        "agent update": lambda: t.agents.update(agent.id, system="changed"),
        "environment update": lambda: t.environments.update(env.id, config={"changed": True}),
    }
    refusals: dict[str, tuple[type[OpenmaError], str, str]] = {}
    for name, write in writes.items():
        with pytest.raises(OpenmaError) as exc:
            await write()
        refusals[name] = (type(exc.value), exc.value.code, exc.value.message)
    assert set(refusals.values()) == {(Conflict, "conflict", f"tenant {tenant.id} is archived")}, refusals

    # Nothing was written: no event, no input, no status change, no stream chunk, no blob.
    session = await s.get(session_id)
    assert session.last_seq == 1 and session.status == "idle"
    assert [i.event_id for i in await s.pending(session_id)] == ["queued"]
    assert [(x.id, x.status, x.text) for x in await s.streams(session_id)] == [(stream.id, "open", "hello")]
    assert [b.key for b in await internal.list(keys.RESERVED_SEGMENT + "/sessions/")] == blobs_before
    assert session.metadata == {} and (await t.agents.get(agent.id)).version == 1
    assert (await t.environments.get(env.id)).config == {}

    # An unknown tenant is refused before any I/O the same way on every path too (NotFound).
    ghost = oma.tenant("tnt_01h0000000000000000000000z")
    for call in (ghost.sessions.unfenced_append, ghost.sessions.post):
        for batch in ([_msg()], [_msg(big)]):
            with pytest.raises(NotFound):
                await call(session_id, batch)
