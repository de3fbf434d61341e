"""The JSON nesting limit: one constant, enforced wherever JSON is written, and every read path returns.

Each entry point takes a value exactly ``MAX_JSON_DEPTH`` deep and reads it back equal on every read path
(pages, ``get_event``, the live tail, the inbox, promotion, spilled events, SSE frames, entity reads and
snapshots), and refuses one level more with ``InvalidInput`` naming the field, writing nothing. Both engines.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma import InvalidInput, OpenmaError, Platform, Settings, TenantScope
from openma.core import jsonutil, keys
from openma.core.jsonutil import MAX_JSON_DEPTH, check_depth, dumps, json_depth, loads
from openma.sse import encode_event
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio

LIMIT = MAX_JSON_DEPTH
SPILL = 2_000


def nested(depth: int, leaf: Any = "x") -> Any:
    """A value exactly ``depth`` containers deep, alternating arrays and objects (built without recursion)."""
    value = leaf
    for i in range(depth):
        value = {"k": value, "n": i} if i % 2 else [value, i]
    return value


def obj(depth: int) -> dict[str, Any]:
    """An object exactly ``depth`` deep (the object itself is one level)."""
    return {"deep": nested(depth - 1), "flat": 1}


def event(depth: int, *, spilled: bool = False, **fields: Any) -> dict[str, Any]:
    """An event object exactly ``depth`` deep, over the spill threshold if asked."""
    data: dict[str, Any] = {"type": "agent.message", "v": nested(depth - 1), **fields}
    if spilled:
        data["pad"] = "p" * (SPILL * 2)
    return data


def field_of(exc: pytest.ExceptionInfo[InvalidInput]) -> object:
    return exc.value.details.get("field")


# -- the checker itself


def test_depth_counts_containers_and_stops_past_the_limit() -> None:
    assert json_depth("x") == 0 and json_depth([]) == 1 and json_depth({"a": [1]}) == 2
    assert all(json_depth(nested(d)) == d for d in (1, 2, 7, LIMIT))
    assert json_depth(nested(LIMIT + 50)) == LIMIT + 1  # stops one past the limit
    assert json_depth(nested(10), limit=5) == 6
    check_depth(nested(LIMIT))
    with pytest.raises(InvalidInput) as exc:
        check_depth(nested(LIMIT + 1), what="tools")
    assert field_of(exc) == "tools" and exc.value.details["max_depth"] == LIMIT


def test_a_very_deep_value_is_refused_without_recursion() -> None:
    deep = nested(100_000)
    with pytest.raises(InvalidInput):
        dumps(deep, what="payload")  # the walk is iterative: no RecursionError from the checker or encoder
    with pytest.raises(InvalidInput):
        dumps([deep] * 3)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(InvalidInput, match="nested too deeply"):
        dumps({"a": cycle})
    wide = {str(i): [i, {"x": [i]}] for i in range(10_000)}
    assert json.loads(dumps(wide)) == wide


def test_stored_json_too_deep_to_parse_is_a_typed_error() -> None:
    text = "[" * 100_000 + "]" * 100_000  # only a row written before the limit existed can hold this
    with pytest.raises(OpenmaError) as exc:
        loads(text)
    assert not isinstance(exc.value, InvalidInput)
    assert loads(dumps(nested(LIMIT))) == nested(LIMIT)


def test_the_limit_is_one_documented_constant() -> None:
    assert jsonutil.MAX_JSON_DEPTH == 64
    docs = Path(__file__).resolve().parents[1].joinpath("docs", "sessions.md").read_text()
    assert "MAX_JSON_DEPTH" in docs and f"{MAX_JSON_DEPTH} levels" in docs


# -- both engines, through the platform


@pytest.fixture
async def oma(engine: str, engine_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    common: dict[str, Any] = {
        "blob_url": f"file://{tmp_path}/blobs",
        "event_spill_bytes": SPILL,
        "sqlite_poll_interval": 0.05,
    }
    if engine == "sqlite":
        settings = Settings(sqlite_path=engine_url, **common)
    else:
        settings = Settings(
            postgres_url=engine_url, store_backends={"default": "pg"}, root_secret=ROOT_SECRET, **common
        )
    async with Platform.open(settings) as platform:
        yield platform


@pytest.fixture
async def t(oma: Platform) -> TenantScope:
    return oma.tenant(await oma.tenants.create(name="acme"))


async def _session(t: TenantScope) -> str:
    agent = await t.agents.create(name="coder", model="m")
    env = await t.environments.create(name="py")
    return (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id


async def _first_from_tail(t: TenantScope, session_id: str, after: int) -> dict[str, Any]:
    tail = t.sessions.subscribe(session_id, after=after)
    with anyio.fail_after(10):
        got = await tail.next()
    await tail.aclose()
    assert got is not None
    return got.data


@pytest.mark.parametrize("spilled", [False, True], ids=["inline", "spilled"])
async def test_events_at_the_limit_read_back_on_every_path(t: TenantScope, spilled: bool) -> None:
    session_id = await _session(t)
    sent = event(LIMIT, spilled=spilled, id="at-limit")
    assert json_depth(sent) == LIMIT
    [stored] = await t.sessions.unfenced_append(session_id, [sent])
    assert stored.data == sent
    assert (await t.sessions.events(session_id)).items[0].data == sent
    assert (await t.sessions.events(session_id, order="desc")).items[0].data == sent
    assert (await t.sessions.get_event(session_id, "at-limit")).data == sent
    assert await _first_from_tail(t, session_id, 0) == sent
    frame = encode_event(await t.sessions.get_event(session_id, "at-limit")).decode()
    assert json.loads(frame.split("\n")[2][len("data: ") :])["data"] == sent

    # The inbox: post, pending, promote, then the log.
    queued = event(LIMIT, spilled=spilled, id="queued")
    [item] = await t.sessions.post(session_id, [queued])
    assert item.data == queued
    assert [i.data for i in await t.sessions.pending(session_id)] == [queued]
    [promoted] = await t.sessions.unfenced_promote(session_id, ["queued"])
    assert promoted.data == queued and promoted.seq == 2
    assert (await t.sessions.get_event(session_id, "queued")).data == queued
    assert await _first_from_tail(t, session_id, 1) == queued

    # A status change's stop_reason is part of its event and held to the same limit.
    await t.sessions.unfenced_set_status(session_id, "running", events=[{"type": "session.status_running"}])
    reason = {"type": "session.status_idle", "stop_reason": obj(LIMIT - 1)}
    _, [status_event] = await t.sessions.unfenced_set_status(session_id, "idle", events=[reason])
    assert status_event.data["stop_reason"] == reason["stop_reason"]
    assert (await t.sessions.events(session_id, after=3)).items[0].data["stop_reason"] == reason["stop_reason"]


@pytest.mark.parametrize("spilled", [False, True], ids=["inline", "spilled"])
async def test_events_past_the_limit_are_refused_and_nothing_is_written(
    oma: Platform, t: TenantScope, spilled: bool
) -> None:
    session_id = await _session(t)
    ok = {"type": "fine"}
    too_deep = event(LIMIT + 1, spilled=spilled)
    with pytest.raises(InvalidInput) as exc:
        await t.sessions.unfenced_append(session_id, [ok, too_deep])
    assert field_of(exc) == "events" and exc.value.details["index"] == 1
    with pytest.raises(InvalidInput) as exc:
        await t.sessions.post(session_id, [ok, too_deep])
    assert field_of(exc) == "events" and exc.value.details["index"] == 1
    await t.sessions.unfenced_set_status(session_id, "running", events=[{"type": "session.status_running"}])
    with pytest.raises(InvalidInput) as exc:
        await t.sessions.unfenced_set_status(
            session_id, "idle", events=[{"type": "session.status_idle", "stop_reason": obj(LIMIT)}]
        )
    assert field_of(exc) == "events"
    session = await t.sessions.get(session_id)
    assert session.last_seq == 1 and session.status == "running"  # only the status_running event
    assert (await t.sessions.pending(session_id)).items == []
    internal = oma.blobs.for_tenant(t.tenant_id, internal=True)
    assert [b.key for b in await internal.list(keys.spill_prefix(session_id))] == []
    # A 100 000-deep event is refused the same way, not with a RecursionError.
    with pytest.raises(InvalidInput):
        await t.sessions.unfenced_append(session_id, [{"type": "x", "v": nested(100_000)}])


async def test_entity_json_at_the_limit_reads_back_and_one_more_is_refused(oma: Platform, t: TenantScope) -> None:
    # Tenants.
    tenant = await oma.tenants.create(name="deep", metadata=obj(LIMIT))
    assert (await oma.tenants.get(tenant.id)).metadata == obj(LIMIT)
    with pytest.raises(InvalidInput) as exc:
        await oma.tenants.create(name="deeper", metadata=obj(LIMIT + 1))
    assert field_of(exc) == "metadata"
    assert "deeper" not in [x.name for x in await oma.tenants.list(limit=100)]

    # Agents: every JSON field, on create and update; a list counts as a level.
    tools = [{"type": "custom", "name": "t", "input_schema": obj(LIMIT - 2)}]
    assert json_depth(tools) == LIMIT
    fields: dict[str, Any] = {
        "tools": tools,
        "mcp_servers": [{"name": "m", "x": obj(LIMIT - 2)}],
        "skills": [{"name": "s", "x": obj(LIMIT - 2)}],
        "metadata": obj(LIMIT),
    }
    model = {"id": "m", "x": obj(LIMIT - 1)}
    agent = await t.agents.create(name="coder", model=model, **fields)
    got = await t.agents.get(agent.id)
    assert got.model == model and all(getattr(got, k) == v for k, v in fields.items())
    assert (await t.agents.get_version(agent.id, 1)).snapshot["tools"] == tools
    for name in ("tools", "mcp_servers", "skills"):
        with pytest.raises(InvalidInput) as exc:
            await t.agents.create(name="too-deep", model="m", **{name: [{"name": "x", "v": obj(LIMIT - 1)}]})
        assert field_of(exc) == name
        with pytest.raises(InvalidInput) as exc:
            await t.agents.update(agent.id, **{name: [{"name": "x", "v": obj(LIMIT - 1)}]})
        assert field_of(exc) == name
    with pytest.raises(InvalidInput) as exc:
        await t.agents.create(name="too-deep", model="m", metadata=obj(LIMIT + 1))
    assert field_of(exc) == "metadata"
    with pytest.raises(InvalidInput) as exc:
        await t.agents.create(name="too-deep", model={"id": "m", "x": obj(LIMIT)})
    assert field_of(exc) == "model"
    with pytest.raises(InvalidInput) as exc:
        await t.agents.update(agent.id, metadata={"k": obj(LIMIT)})  # merged key by key, then checked
    assert field_of(exc) == "metadata"
    assert [a.name for a in await t.agents.list()] == ["coder"]
    assert (await t.agents.get(agent.id)).version == 1
    updated = await t.agents.update(agent.id, metadata={"k": obj(LIMIT - 1)})
    assert updated.metadata["k"] == obj(LIMIT - 1) and updated.version == 2

    # Environments.
    config = obj(LIMIT)
    env = await t.environments.create(name="py", config=config, metadata=obj(LIMIT))
    assert (await t.environments.get(env.id)).config == config
    for change in ({"config": obj(LIMIT + 1)}, {"metadata": obj(LIMIT + 1)}):
        with pytest.raises(InvalidInput) as exc:
            await t.environments.update(env.id, **change)
        assert field_of(exc) == next(iter(change))
        with pytest.raises(InvalidInput):
            await t.environments.create(name="py2", **change)
    assert (await t.environments.get(env.id)).config == config
    assert [e.name for e in await t.environments.list()] == ["py"]

    # Sessions: their snapshots embed the agent's and environment's values one level down.
    session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, metadata=obj(LIMIT))
    read = await t.sessions.get(session.id)
    assert read.agent["tools"] == tools and read.environment["config"] == config and read.metadata == obj(LIMIT)
    with pytest.raises(InvalidInput) as exc:
        await t.sessions.create(agent_id=agent.id, environment_id=env.id, metadata=obj(LIMIT + 1))
    assert field_of(exc) == "metadata"
    with pytest.raises(InvalidInput) as exc:
        await t.sessions.update(session.id, metadata={"k": obj(LIMIT)})
    assert field_of(exc) == "metadata"
    assert len(await t.sessions.list()) == 1
    assert (await t.sessions.get(session.id)).metadata == obj(LIMIT)
