"""Concurrent partial updates never revert a field they did not touch, on every entity with ``update``.

Each writer owns some *slots* (a column, a config field or a metadata key of one row) and writes increasing
values to them; after each of its writes the row it gets back must still hold its latest value in every slot
it owns, and at the end every slot holds the last value its writer wrote. Writers race as anyio tasks in one
process and as two real processes (this module run as a script), on SQLite and on Postgres. Tenants have no
``update`` (only ``archive``), so they are not part of it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.partial import PartialUpdate
from openma.core import validate
from openma.core.jsonutil import dumps
from openma.errors import Conflict, InvalidInput, VersionConflict
from openma.ports.tenancy import TenantRef

pytestmark = pytest.mark.anyio

#: Writes per slot in the in-process race, and per worker in the two-process race.
TASK_ROUNDS = 25
PROCESS_ROUNDS = 100
#: Wall-clock bound of one writer, whatever its count.
WRITER_SECONDS = 25.0


@attrs.frozen
class Slot:
    """One independently written piece of a row: how to write a value to it and read it back."""

    write: Callable[[Any, str, str], Awaitable[Any]]
    read: Callable[[Any], Any]


def _meta(key: str) -> Slot:
    return Slot(lambda s, i, v: s.update(i, metadata={key: v}), lambda e: e.metadata.get(key))


def _field(name: str) -> Slot:
    return Slot(lambda s, i, v: s.update(i, **{name: v}), lambda e: getattr(e, name))


SLOTS: dict[str, dict[str, Slot]] = {
    "sessions": {
        "title": _field("title"),
        "meta:a": _meta("a"),
        "meta:b": _meta("b"),
        "meta:c": _meta("c"),
    },
    "environments": {
        "name": _field("name"),
        "description": _field("description"),
        "config": Slot(lambda s, i, v: s.update(i, config={"v": v}), lambda e: e.config.get("v")),
        "meta:a": _meta("a"),
        "meta:b": _meta("b"),
    },
    "agents": {
        "name": _field("name"),
        "system": _field("system"),
        "description": _field("description"),
        "model": _field("model"),
        "meta:a": _meta("a"),
        "meta:b": _meta("b"),
    },
}
#: How the slots of an entity are split between the two processes.
ROLES: dict[str, tuple[list[str], list[str]]] = {
    # Title writes that change no metadata are the ones a stale metadata write used to revert.
    "sessions": (["title", "title", "title", "meta:a"], ["meta:b", "meta:c"]),
    "environments": (["name", "meta:a"], ["description", "config", "meta:b"]),
    "agents": (["name", "system", "meta:a"], ["description", "model", "meta:b"]),
}
ENTITIES = list(SLOTS)


def _store(backend: SqlStoreBackend, entity: str, tenant_id: str) -> Any:
    ref = TenantRef(tenant_id)
    if entity == "sessions":
        return backend.sessions(ref)
    if entity == "environments":
        return backend.environments(ref)
    return backend.agents(ref)


async def _create(backend: SqlStoreBackend, entity: str) -> tuple[str, str]:
    """A tenant and one row of ``entity`` in it: ``(tenant_id, row id)``."""
    tenant = await backend.tenants.create(name="race")
    store = _store(backend, entity, tenant.id)
    if entity == "sessions":
        row = await store.create(
            agent_id="agt_01h0000000000000000000000a",
            environment_id="env_01h0000000000000000000000a",
            agent_snapshot={},
            environment_snapshot={},
            title="start",
            metadata={"keep": "me"},
        )
    elif entity == "environments":
        row = await store.create(name="start", metadata={"keep": "me"})
    else:
        row = await store.create(name="start", model="m0", metadata={"keep": "me"})
    return tenant.id, str(row.id)


async def hammer(store: Any, row_id: str, slots: list[str], slot_of: dict[str, Slot], rounds: int) -> dict[str, Any]:
    """Write ``rounds`` values to each of ``slots`` in turn (a slot may be listed more than once); after every
    write check that the returned row still holds this writer's latest value in each of its slots. Returns the
    last values, the reverts seen and the number of writes."""
    last: dict[str, str] = {}
    reverts: list[str] = []
    writes = 0
    deadline = time.monotonic() + WRITER_SECONDS
    for i in range(rounds):
        if time.monotonic() > deadline:
            break
        for j, name in enumerate(slots):
            value = f"{name}-{i}.{j}"
            row = await slot_of[name].write(store, row_id, value)
            writes += 1
            last[name] = value
            for mine, expected in last.items():
                got = slot_of[mine].read(row)
                if got != expected:
                    reverts.append(f"after writing {name}={value}: {mine} is {got!r}, not {expected!r}")
    return {"last": last, "reverts": reverts, "writes": writes}


async def _check_final(backend: SqlStoreBackend, entity: str, tenant_id: str, row_id: str, last: dict[str, str]) -> Any:
    row = await _store(backend, entity, tenant_id).get(row_id)
    for name, expected in last.items():
        assert SLOTS[entity][name].read(row) == expected, name
    assert row.metadata.get("keep") == "me"
    return row


async def _check_versions(backend: SqlStoreBackend, tenant_id: str, agent_id: str, writes: int) -> None:
    """Every effective update made exactly one version: numbers 1..N, no gap, no duplicate."""
    agents = backend.agents(TenantRef(tenant_id))
    numbers: list[int] = []
    cursor = None
    while True:
        page = await agents.versions(agent_id, order="asc", limit=100, cursor=cursor)
        numbers += [v.version for v in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert numbers == list(range(1, writes + 2))
    agent = await agents.get(agent_id)
    assert agent.version == writes + 1
    latest = await agents.get_version(agent_id, agent.version)
    assert latest.snapshot["system"] == agent.system and latest.snapshot["model"] == agent.model


@pytest.mark.parametrize("entity", ENTITIES)
async def test_racing_tasks_keep_every_field(store_backend: SqlStoreBackend, entity: str) -> None:
    tenant_id, row_id = await _create(store_backend, entity)
    store = _store(store_backend, entity, tenant_id)
    slot_of = SLOTS[entity]
    results: dict[str, dict[str, Any]] = {}

    async def one(name: str) -> None:
        results[name] = await hammer(store, row_id, [name], slot_of, TASK_ROUNDS)

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            for name in slot_of:
                tg.start_soon(one, name)
    assert [r for res in results.values() for r in res["reverts"]] == []
    last = {k: v for res in results.values() for k, v in res["last"].items()}
    await _check_final(store_backend, entity, tenant_id, row_id, last)
    if entity == "agents":
        await _check_versions(store_backend, tenant_id, row_id, sum(r["writes"] for r in results.values()))


class _FrozenClock:
    """Every write in the same millisecond (the case an ``updated_at`` check cannot tell apart)."""

    def now_ms(self) -> int:
        return 1_700_000_000_000


class _GatedClient:
    """A client whose write units wait for ``gate``: the update using it has read the row and not yet written."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.waiting = anyio.Event()
        self.gate = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def run_batch(self, statements: Any) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await self._inner.run_batch(statements)


INTERLEAVINGS = [
    ("sessions", {"metadata": {"b": "stale-side"}}, {"title": "meanwhile"}),
    ("sessions", {"title": "stale-side"}, {"metadata": {"b": "meanwhile"}}),
    ("environments", {"config": {"v": "stale-side"}}, {"description": "meanwhile"}),
    ("environments", {"metadata": {"b": "stale-side"}}, {"name": "meanwhile"}),
    ("environments", {"description": "stale-side"}, {"metadata": {"a": "meanwhile"}}),
    ("agents", {"system": "stale-side"}, {"description": "meanwhile"}),
    ("agents", {"metadata": {"b": "stale-side"}}, {"metadata": {"a": "meanwhile"}}),
]


@pytest.mark.parametrize(
    ("entity", "slow", "fast"),
    INTERLEAVINGS,
    ids=[f"{e}-{next(iter(a))}-vs-{next(iter(b))}" for e, a, b in INTERLEAVINGS],
)
async def test_an_update_that_read_first_does_not_revert_one_written_meanwhile(
    store_backend: SqlStoreBackend, entity: str, slow: dict[str, Any], fast: dict[str, Any]
) -> None:
    """The issue's interleaving, made deterministic: A reads, B writes another field, then A writes."""
    tenant_id, row_id = await _create(store_backend, entity)
    gated = _GatedClient(store_backend.client)
    stores = [SqlStoreBackend(store_backend.name, client, _FrozenClock()) for client in (gated, store_backend.client)]
    slow_store, fast_store = (_store(b, entity, tenant_id) for b in stores)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: slow_store.update(row_id, **slow))
            await gated.waiting.wait()
            await fast_store.update(row_id, **fast)
            gated.gate.set()
    row = await fast_store.get(row_id)
    for changes in (slow, fast):
        for field, value in changes.items():
            got = getattr(row, field)
            assert got == ({**got, **value} if field == "metadata" else value), field
    assert row.metadata.get("keep") == "me"
    if entity == "agents":
        await _check_versions(store_backend, tenant_id, row_id, 2)


@pytest.mark.parametrize("entity", ENTITIES)
async def test_an_update_that_read_first_refuses_a_row_archived_meanwhile(
    store_backend: SqlStoreBackend, entity: str
) -> None:
    tenant_id, row_id = await _create(store_backend, entity)
    gated = _GatedClient(store_backend.client)
    slow_store = _store(SqlStoreBackend(store_backend.name, gated), entity, tenant_id)
    fast_store = _store(store_backend, entity, tenant_id)
    refused: list[Conflict] = []

    async def slow() -> None:
        with pytest.raises(Conflict) as caught:
            await slow_store.update(row_id, metadata={"late": "write"})
        refused.append(caught.value)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await gated.waiting.wait()
            await fast_store.archive(row_id)
            gated.gate.set()
    assert refused and "archived" in str(refused[0])
    assert "late" not in (await fast_store.get(row_id)).metadata


async def _race_same_version(agents: Any, agent_id: str, fields: list[str], round_: int) -> list[str]:
    """Every field updated at once against the same ``expected_version``; the fields that won."""
    version = (await agents.get(agent_id)).version
    won: list[str] = []
    refused: list[VersionConflict] = []

    async def one(field: str) -> None:
        try:
            await agents.update(agent_id, expected_version=version, **{field: f"{field}-{round_}"})
            won.append(field)
        except VersionConflict as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for field in fields:
            tg.start_soon(one, field)
    assert len(refused) == len(fields) - len(won)
    assert all(exc.code == "version_conflict" for exc in refused)
    agent = await agents.get(agent_id)
    assert agent.version == version + len(won)
    return won


async def test_expected_version_lets_exactly_one_of_racing_updates_win(store_backend: SqlStoreBackend) -> None:
    tenant_id, agent_id = await _create(store_backend, "agents")
    agents = store_backend.agents(TenantRef(tenant_id))
    fields = ["system", "description", "model", "name"]
    for round_ in range(8):
        won = await _race_same_version(agents, agent_id, fields, round_)
        assert len(won) == 1
        assert getattr(await agents.get(agent_id), won[0]) == f"{won[0]}-{round_}"
    await _check_versions(store_backend, tenant_id, agent_id, 8)


@pytest.mark.parametrize("entity", ["sessions", "environments", "agents"])
async def test_metadata_patch_merges_key_by_key_and_keeps_values_exact(
    store_backend: SqlStoreBackend, entity: str
) -> None:
    tenant_id, row_id = await _create(store_backend, entity)
    store = _store(store_backend, entity, tenant_id)
    start = {
        "keep": {"x": [1, 0.30000000000000004, None, True]},
        "gone": 1,
        "nested": {"a": 1},
        "big": 2**62,
    }
    await store.update(row_id, metadata=start)
    patch = {
        "gone": None,
        "nested": {"b": None},
        "new": 'é "quoted" \\ \u0001 日本',
        'k"\u0001é.$[0]': [],
        "absent": None,
    }
    row = await store.update(row_id, metadata=patch)
    expected = validate.merge_metadata(start, patch)
    assert row.metadata == expected
    assert (await store.get(row_id)).metadata == expected
    column = "config" if entity == "agents" else "metadata"
    stored = await store_backend.client.fetch_one(f"SELECT {column} AS m FROM {entity} WHERE id = ?", (row_id,))
    assert stored is not None
    text = stored["m"] if entity != "agents" else dumps(json.loads(stored["m"])["metadata"])
    # Stored compact, so the engine's size check measures what Python measures.
    assert len(text.encode()) == len(dumps(expected).encode())


@pytest.mark.parametrize("entity", ["sessions", "environments"])
async def test_metadata_with_nul_is_refused_and_old_rows_holding_one_still_merge(
    store_backend: SqlStoreBackend, entity: str
) -> None:
    tenant_id, row_id = await _create(store_backend, entity)
    store = _store(store_backend, entity, tenant_id)
    with pytest.raises(InvalidInput, match="NUL"):
        await store.update(row_id, metadata={"bad": ["a\x00b"]})
    assert (await store.get(row_id)).metadata == {"keep": "me"}
    legacy = dumps({"keep": "me", "old": "a\x00b", "escaped": "\\u0000"})
    await store_backend.client.execute(f"UPDATE {entity} SET metadata = ? WHERE id = ?", (legacy, row_id))
    row = await store.update(row_id, metadata={"keep": None, "new": 1})
    assert row.metadata == {"old": "a\x00b", "escaped": "\\u0000", "new": 1}
    assert (await store.get(row_id)).metadata == row.metadata


@pytest.mark.parametrize("entity", ["sessions", "environments", "agents"])
async def test_racing_patches_cannot_push_metadata_past_its_key_limit(
    store_backend: SqlStoreBackend, entity: str
) -> None:
    tenant_id, row_id = await _create(store_backend, entity)
    store = _store(store_backend, entity, tenant_id)
    half = validate.MAX_METADATA_KEYS // 2 + 4
    outcomes: list[str] = []

    async def one(prefix: str) -> None:
        try:
            await store.update(row_id, metadata={f"{prefix}{k}": k for k in range(half)})
            outcomes.append("ok")
        except InvalidInput:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "x")
        tg.start_soon(one, "y")
    assert sorted(outcomes) == ["ok", "refused"]
    assert len((await store.get(row_id)).metadata) == half + 1


async def test_merge_statement_refuses_a_result_over_the_byte_limit(store_backend: SqlStoreBackend) -> None:
    """The size guard in the statement itself (what protects a patch that raced another one)."""
    tenant_id, session_id = await _create(store_backend, "sessions")
    db = store_backend.client

    async def merge(patch: dict[str, Any], max_bytes: int) -> bool:
        update = PartialUpdate(db.dialect)
        update.merge("metadata", patch, max_bytes=max_bytes)
        statement = update.statement("sessions", "tenant_id = ? AND id = ?", (tenant_id, session_id), 1)
        return (await db.run_batch([statement])).committed

    patch = {"k": "é" * 100}
    size = len(dumps({"keep": "me", **patch}).encode())
    assert not await merge(patch, size - 1)
    assert (await _store(store_backend, "sessions", tenant_id).get(session_id)).metadata == {"keep": "me"}
    assert await merge(patch, size)
    assert (await _store(store_backend, "sessions", tenant_id).get(session_id)).metadata == {"keep": "me", **patch}


@pytest.mark.parametrize("entity", ENTITIES)
async def test_two_processes_keep_every_field(
    store_backend: SqlStoreBackend, engine: str, engine_url: str, entity: str
) -> None:
    tenant_id, row_id = await _create(store_backend, entity)
    paths = [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    results: list[dict[str, Any]] = []

    async def worker(role: int, ready: anyio.Event, go: anyio.Event) -> None:
        args = [engine, engine_url, entity, tenant_id, row_id, str(role), str(PROCESS_ROUNDS)]
        async with await anyio.open_process(
            [sys.executable, "-m", "tests.test_concurrent_updates", *args], env=env
        ) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            lines = _lines(proc.stdout)
            assert await lines.__anext__() == "ready"
            ready.set()
            await go.wait()
            await proc.stdin.send(b"go\n")
            results.append(json.loads(await lines.__anext__()))
            assert await proc.wait() == 0

    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            ready = [anyio.Event(), anyio.Event()]
            go = anyio.Event()
            for role in (0, 1):
                tg.start_soon(worker, role, ready[role], go)
            for event in ready:
                await event.wait()
            go.set()
    assert [r for res in results for r in res["reverts"]] == []
    last = {k: v for res in results for k, v in res["last"].items()}
    assert len(last) == len(SLOTS[entity])
    await _check_final(store_backend, entity, tenant_id, row_id, last)
    if entity == "agents":
        await _check_versions(store_backend, tenant_id, row_id, sum(r["writes"] for r in results))


async def _lines(stream: Any) -> Any:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


async def _worker_main(engine: str, url: str, entity: str, tenant_id: str, row_id: str, role: int, rounds: int) -> None:
    from tests.fixtures.engines import open_postgres_backend, open_sqlite_backend

    backend = await (open_sqlite_backend(Path(url)) if engine == "sqlite" else open_postgres_backend(url))
    try:
        store = _store(backend, entity, tenant_id)
        await store.get(row_id)  # connections warm before the start line
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        result = await hammer(store, row_id, ROLES[entity][role], SLOTS[entity], rounds)
        print(json.dumps(result), flush=True)
    finally:
        await backend.aclose()


if __name__ == "__main__":
    _engine, _url, _entity, _tenant, _row, _role, _rounds = sys.argv[1:]
    anyio.run(_worker_main, _engine, _url, _entity, _tenant, _row, int(_role), int(_rounds), backend="asyncio")
