"""The portable append unit (SQLite's): the bump returns the new last seq, the insert returns nothing, and an
id already in the log is caught by the log's unique event-id index (the unit is then rolled back whole, the
ids are looked up and only the others are written). Same outcomes as before, on every engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.sessions import SqlSessionStore
from openma.errors import LeaseLost
from openma.ports.tenancy import TenantRef
from tests.fixtures.engines import open_sqlite_backend
from tests.fixtures.units import spy_sqlite_units

pytestmark = pytest.mark.anyio

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"


async def _session(backend: SqlStoreBackend) -> tuple[str, SqlSessionStore]:
    tenant = await backend.tenants.create(name="t")
    store = backend.sessions(TenantRef(tenant.id))
    session = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    return session.id, store


def _events(*ids: str) -> list[dict[str, Any]]:
    return [{"type": "agent.message", "id": i, "text": f"text of {i}"} for i in ids]


async def test_a_partly_retried_batch_writes_only_the_new_ids_with_gapless_seqs(store_backend: SqlStoreBackend) -> None:
    session_id, store = await _session(store_backend)
    first = await store.append(session_id, _events("a", "b"))
    assert [(e.id, e.seq) for e in first] == [("a", 1), ("b", 2)]
    again = await store.append(session_id, _events("b", "c", "a", "d"))
    assert [(e.id, e.seq) for e in again] == [("b", 2), ("c", 3), ("a", 1), ("d", 4)]
    assert again[0] == first[1] and again[2] == first[0]  # as stored: same time, same payload
    page = await store.events(session_id, limit=100)
    assert [(e.id, e.seq) for e in page.items] == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    assert page.items == [first[0], first[1], again[1], again[3]]
    assert (await store.get(session_id)).last_seq == 4
    assert await store.append(session_id, _events("a", "b", "c", "d")) == page.items  # all retried: nothing new
    assert (await store.get(session_id)).last_seq == 4


async def test_concurrent_appends_of_one_id_store_it_once(store_backend: SqlStoreBackend) -> None:
    session_id, store = await _session(store_backend)
    got: dict[int, list[Any]] = {}

    async def one(k: int) -> None:
        got[k] = await store.append(session_id, _events("shared", f"own-{k}"))

    async with anyio.create_task_group() as tg:
        for k in range(12):
            tg.start_soon(one, k)
    page = await store.events(session_id, limit=100)
    assert [e.seq for e in page.items] == list(range(1, 14))  # gapless: no seq was taken by a refused unit
    assert sorted(e.id for e in page.items) == sorted(["shared", *(f"own-{k}" for k in range(12))])
    by_id = {e.id: e for e in page.items}
    for k, events in got.items():
        assert events == [by_id["shared"], by_id[f"own-{k}"]]


async def test_a_status_change_retried_with_its_event_is_idempotent(store_backend: SqlStoreBackend) -> None:
    session_id, store = await _session(store_backend)
    fence = (await store.take_lease(session_id, "h")).epoch
    event = {"type": "session.status_running", "id": "st-1"}
    session, written = await store.set_status(
        session_id, "running", from_statuses=("idle",), events=[event], fence=fence
    )
    assert session.status == "running" and [e.seq for e in written] == [1]
    again, rewritten = await store.set_status(
        session_id, "running", from_statuses=("idle",), events=[event], fence=fence
    )
    assert again.status == "running" and rewritten == written
    assert (await store.get(session_id)).last_seq == 1


async def test_a_stale_fence_writes_nothing(store_backend: SqlStoreBackend) -> None:
    session_id, store = await _session(store_backend)
    epoch = (await store.take_lease(session_id, "h")).epoch
    with pytest.raises(LeaseLost):
        await store.append(session_id, _events("x"), fence=epoch - 1)
    assert (await store.events(session_id, limit=10)).items == []
    assert (await store.get(session_id)).last_seq == 0


async def test_the_sqlite_unit_is_a_bump_returning_last_seq_and_an_insert_returning_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    units = spy_sqlite_units(monkeypatch)
    backend = await open_sqlite_backend(tmp_path / "u.db")
    try:
        session_id, store = await _session(backend)
        units.clear()
        written = await store.append(session_id, _events("p", "q", "r"))
        assert [e.seq for e in written] == [1, 2, 3]
        (unit,) = [u for u in units if u and u[0].sql.startswith("UPDATE sessions SET last_seq")]
        bump, insert = unit
        assert bump.sql.endswith("RETURNING last_seq") and bump.fetch and bump.expect_rows
        assert "NOT EXISTS" not in bump.sql  # the unique index is the dedup, not a probe per id first
        assert insert.sql.startswith("INSERT INTO session_events") and "RETURNING" not in insert.sql
        assert not insert.fetch
        # A plain multi-row VALUES whose seq reads the bumped counter: no join with a VALUES table.
        assert " VALUES (?1, ?2, (SELECT last_seq FROM sessions WHERE" in insert.sql and "JOIN" not in insert.sql
    finally:
        await backend.aclose()
