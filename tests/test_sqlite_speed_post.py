"""The portable post unit (SQLite's): the bump returns the new last inbox position, the insert returns nothing,
and an id already in the inbox is caught by the inbox's unique event-id index (the unit is then rolled back
whole, the ids are looked up and only the others are written). Same outcomes as before, on every engine:
gapless positions, a retried id returns the stored item and writes nothing, a mixed batch stores only its new
ids, a session that takes no input is refused with the same errors, the session is runnable once posted to,
and spilled blobs are kept only for what was stored."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.sessions import SqlSessionStore
from openma.errors import Conflict, NotFound
from openma.models import InboxItem
from openma.ports.blobs import BlobStore
from openma.ports.tenancy import TenantRef
from tests.fixtures.engines import open_backend, open_sqlite_backend
from tests.fixtures.units import spy_sqlite_units

T = TypeVar("T")

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"
SPILL_BYTES = 2_000


@dataclass(frozen=True)
class _Settings:
    event_spill_bytes: int = SPILL_BYTES
    sqlite_poll_interval: float = 0.05


@dataclass
class Harness:
    """A store on ``engine`` (with an in-memory blob store) driven from sync tests through a portal."""

    portal: anyio.from_thread.BlockingPortal
    backend: SqlStoreBackend
    store: SqlSessionStore
    blobs: BlobStore

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            return await fn()

        return self.portal.call(call)

    def session(self) -> str:
        async def make() -> str:
            made = await self.store.create(
                agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={}
            )
            return made.id

        return self.run(make)

    def pending(self, session_id: str) -> list[InboxItem]:
        return list(self.run(lambda: self.store.pending(session_id, limit=1000)).items)

    def last_pos(self, session_id: str) -> int:
        row = self.run(
            lambda: self.backend.client.fetch_one("SELECT last_inbox_pos FROM sessions WHERE id = ?", (session_id,))
        )
        assert row is not None
        return int(row["last_inbox_pos"])

    def blob_keys(self) -> set[str]:
        async def keys() -> set[str]:
            out: set[str] = set()
            cursor = None
            while True:
                page = await self.blobs.list("", cursor=cursor, limit=1000)
                out.update(b.key for b in page.items)
                if page.next_cursor is None:
                    return out
                cursor = page.next_cursor

        return self.run(keys)


@pytest.fixture
def h(engine: str, engine_url: str) -> Iterator[Harness]:
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        backend = portal.call(open_backend, f"{engine} {engine_url}")
        try:

            async def setup() -> tuple[SqlSessionStore, BlobStore, FsspecBlobStore]:
                root = await FsspecBlobStore.open(f"memory://post-{uuid.uuid4().hex}")
                tenant = await backend.tenants.create(name="t")
                blobs = root.for_tenant(tenant.id, internal=True)
                return backend.sessions(TenantRef(tenant.id), blobs=blobs, settings=_Settings()), blobs, root

            store, blobs, root = portal.call(setup)
            try:
                yield Harness(portal, backend, store, blobs)
            finally:
                portal.call(root.aclose)
        finally:
            portal.call(backend.aclose)


def _msg(event_id: str, text: str = "", *, big: bool = False) -> dict[str, Any]:
    body = "b" * (SPILL_BYTES * 2) if big else text or f"text of {event_id}"
    return {"type": "user.message", "id": event_id, "content": [{"type": "text", "text": body}]}


_IDS = st.sampled_from([f"m{k}" for k in range(8)])
_BATCHES = st.lists(st.lists(st.tuples(_IDS, st.booleans()), min_size=1, max_size=5), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_BATCHES)
def test_mixed_retries_store_each_id_once_at_gapless_positions(
    h: Harness, batches: list[list[tuple[str, bool]]]
) -> None:
    session_id = h.session()
    blobs_before = h.blob_keys()
    model: dict[str, InboxItem] = {}  # what the inbox must hold, by id
    for k, batch in enumerate(batches):
        events = [_msg(eid, f"{eid} in post {k}", big=big) for eid, big in batch]
        got = h.run(lambda events=events: h.store.post(session_id, events))  # type: ignore[misc]
        assert [item.event_id for item in got] == [eid for eid, _ in batch]
        first_of: dict[str, InboxItem] = {}
        for (eid, _), item in zip(batch, got, strict=True):
            if eid in model:  # a retried id: the stored item as it is, not this post's payload
                assert item == model[eid]
            elif eid in first_of:  # twice in one post: stored once, the first
                assert item == first_of[eid]
            else:
                first_of[eid] = item
                assert item.position == len(model) + len(first_of)  # new ids take the next positions, in order
                assert item.state == "pending" and item.data == events[batch.index((eid, _))]
        model.update(first_of)
    pending = h.pending(session_id)
    assert [p.position for p in pending] == list(range(1, len(model) + 1))  # gapless, nothing taken twice
    assert {p.event_id: p for p in pending} == model
    assert h.last_pos(session_id) == len(model)
    assert h.run(lambda: h.store.is_runnable(session_id))
    spilled = {item.event_id for item in model.values() if len(item.data["content"][0]["text"]) > SPILL_BYTES}
    # One blob per stored spilled input; the blobs of a retried or repeated id were dropped.
    assert len(h.blob_keys() - blobs_before) == len(spilled)


def test_an_all_retried_post_writes_nothing(h: Harness) -> None:
    session_id = h.session()
    first = h.run(lambda: h.store.post(session_id, [_msg("a"), _msg("b", big=True)]))
    keys = h.blob_keys()
    again = h.run(lambda: h.store.post(session_id, [_msg("b", "other", big=True), _msg("a", "other")]))
    assert again == [first[1], first[0]]
    assert h.pending(session_id) == first
    assert h.blob_keys() == keys  # the retry's spilled blob was dropped, the stored one kept
    assert h.last_pos(session_id) == 2


@pytest.mark.parametrize("how", ["archive", "terminate", "delete"])
def test_a_session_that_takes_no_input_refuses_a_post_and_keeps_no_blob(h: Harness, how: str) -> None:
    session_id = h.session()
    [posted] = h.run(lambda: h.store.post(session_id, [_msg("kept")]))
    keys = h.blob_keys()
    if how == "archive":
        h.run(lambda: h.store.archive(session_id))
    elif how == "terminate":
        h.run(lambda: h.store.set_status(session_id, "terminated"))
    else:
        h.run(lambda: h.store.delete(session_id))
    error = NotFound if how == "delete" else Conflict
    for events in ([_msg("new")], [_msg("kept"), _msg("new", big=True)], [_msg("kept")]):
        with pytest.raises(error) as info:
            h.run(lambda events=events: h.store.post(session_id, events))  # type: ignore[misc]
        if how != "delete":
            assert ("archived" if how == "archive" else "terminated") in str(info.value)
    assert h.blob_keys() == keys
    if how != "delete":
        assert h.pending(session_id) == [posted]
        assert h.last_pos(session_id) == 1


def test_concurrent_posts_of_one_id_store_it_once(h: Harness) -> None:
    session_id = h.session()
    got: dict[int, list[InboxItem]] = {}

    async def all_of_them() -> None:
        async def one(k: int) -> None:
            got[k] = await h.store.post(session_id, [_msg("shared"), _msg(f"own-{k}")])

        async with anyio.create_task_group() as tg:
            for k in range(12):
                tg.start_soon(one, k)

    h.run(all_of_them)
    pending = h.pending(session_id)
    assert [p.position for p in pending] == list(range(1, 14))
    by_id = {p.event_id: p for p in pending}
    assert sorted(by_id) == sorted(["shared", *(f"own-{k}" for k in range(12))])
    for k, items in got.items():
        assert items == [by_id["shared"], by_id[f"own-{k}"]]


@pytest.mark.anyio
async def test_the_sqlite_unit_is_a_bump_returning_the_position_an_insert_and_the_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    units = spy_sqlite_units(monkeypatch)
    backend = await open_sqlite_backend(tmp_path / "u.db")
    try:
        tenant = await backend.tenants.create(name="t")
        store = backend.sessions(TenantRef(tenant.id))
        made = await store.create(
            agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={}
        )
        units.clear()
        posted = await store.post(made.id, [_msg("p"), _msg("q"), _msg("r")])
        assert [p.position for p in posted] == [1, 2, 3]
        (unit,) = [u for u in units if u and u[0].sql.startswith("UPDATE sessions SET last_inbox_pos")]
        bump, insert, mark = unit
        assert bump.sql.endswith("RETURNING last_inbox_pos") and bump.fetch and bump.expect_rows
        assert insert.sql.startswith("INSERT INTO session_inbox") and "RETURNING" not in insert.sql
        assert not insert.fetch and "JOIN" not in insert.sql
        assert " VALUES (?1, ?2, (SELECT last_inbox_pos FROM sessions WHERE" in insert.sql
        assert "NOT EXISTS" not in insert.sql  # the unique index is the dedup, not a probe per id
        assert mark.sql.startswith("INSERT INTO session_runnable")
        assert await store.is_runnable(made.id)
    finally:
        await backend.aclose()
