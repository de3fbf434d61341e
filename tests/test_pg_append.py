"""Postgres appends: cost that does not grow with the session, and dedup left to the unique event-id index.

The one-statement append carries no ``NOT EXISTS`` check of its ids: without fresh statistics the planner served
that check from another index on ``(tenant_id, session_id, ...)`` (the primary key, the type index) and read
every event of the session on every append. A retried id fails the statement on the unique index instead, and
the log writes only the new ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from openma.adapters.postgres import PostgresClient
from openma.adapters.postgres_engine import as_columns
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.sessions import SqlSessionStore
from openma.errors import Conflict
from openma.ports.tenancy import TenantRef
from openma.settings import Settings
from tests.fixtures.pg_stats import entries_read

pytestmark = pytest.mark.anyio

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend(pg_url: str) -> AsyncIterator[SqlStoreBackend]:
    settings = Settings(postgres_url=pg_url, pg_pool_min_size=1, pg_pool_max_size=1)
    b = SqlStoreBackend("pg", await PostgresClient.open(pg_url, settings))
    try:
        yield b
    finally:
        await b.aclose()


async def new_session(backend: SqlStoreBackend) -> tuple[SqlSessionStore, str]:
    tenant = await backend.tenants.create(name="t")
    store = backend.sessions(TenantRef(tenant.id))
    session = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    return store, session.id


async def test_an_append_does_not_read_the_sessions_earlier_events(backend: SqlStoreBackend) -> None:
    store, sid = await new_session(backend)
    await store.append(sid, [{"type": "x.event", "n": i} for i in range(300)])
    client = backend.client
    before = await entries_read(client)
    for i in range(40):
        await store.append(sid, [{"type": "x.event", "n": i}], fence=0)
    reads = await entries_read(client) - before
    # A check served by an index on (tenant_id, session_id, ...) reads the session's 300+ events per append.
    assert reads < 40 * 10, reads
    page = await store.events(sid, after=300, limit=100)
    assert [e.seq for e in page.items] == list(range(301, 341))


async def test_retried_ids_are_written_once_with_gapless_seqs(backend: SqlStoreBackend) -> None:
    store, sid = await new_session(backend)
    first = await store.append(sid, [{"type": "x.event", "id": "evt_a"}, {"type": "x.event", "id": "evt_b"}])
    assert [e.seq for e in first] == [1, 2]
    assert await store.append(sid, [{"type": "x.event", "id": "evt_b"}], fence=0) == [first[1]]
    mixed = await store.append(
        sid,
        [{"type": "x.event", "id": "evt_c"}, {"type": "x.event", "id": "evt_a"}, {"type": "x.event", "id": "evt_d"}],
        fence=0,
    )
    assert [(e.id, e.seq) for e in mixed] == [("evt_c", 3), ("evt_a", 1), ("evt_d", 4)]
    [e] = await store.append(sid, [{"type": "x.event", "id": "evt_e"}])
    assert e.seq == 5
    assert (await store.get(sid)).last_seq == 5


async def test_concurrent_appends_of_the_same_ids_store_each_once(backend: SqlStoreBackend) -> None:
    store, sid = await new_session(backend)
    results: list[list[Any]] = []

    async def append(k: int) -> None:
        ids = [f"evt_{j}" for j in range(k % 3, 6)]
        results.append(await store.append(sid, [{"type": "x.event", "id": i} for i in ids]))

    async with anyio.create_task_group() as tg:
        for k in range(8):
            tg.start_soon(append, k)
    page = await store.events(sid, limit=100)
    assert sorted(e.id for e in page.items) == [f"evt_{j}" for j in range(6)]
    assert [e.seq for e in page.items] == list(range(1, 7))
    by_id = {e.id: e for e in page.items}
    for got in results:
        assert all(by_id[e.id] == e for e in got)


async def test_a_post_is_one_statement_that_marks_the_session_runnable(
    backend: SqlStoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, sid = await new_session(backend)
    client = backend.client
    units: list[int] = []
    run_batch = client.run_batch

    async def counting(statements: Any) -> Any:
        units.append(len(statements))
        return await run_batch(statements)

    monkeypatch.setattr(client, "run_batch", counting)
    items = await store.post(sid, [{"type": "user.message", "id": f"evt_{i}", "text": "hi"} for i in range(3)])
    assert units == [1]
    assert [i.position for i in items] == [1, 2, 3]
    runnable = await client.fetch_all("SELECT session_id FROM session_runnable WHERE session_id = ?", (sid,))
    assert runnable == [{"session_id": sid}]
    again = await store.post(sid, [{"type": "user.message", "id": f"evt_{i}", "text": "hi"} for i in range(2, 5)])
    assert [(i.event_id, i.position) for i in again] == [("evt_2", 3), ("evt_3", 4), ("evt_4", 5)]
    assert [i.position for i in (await store.pending(sid)).items] == [1, 2, 3, 4, 5]
    await store.archive(sid)
    with pytest.raises(Conflict, match="archived"):
        await store.post(sid, [{"type": "user.message", "id": "evt_9", "text": "late"}])
    assert len((await store.pending(sid)).items) == 5


# -- batches as arrays


@given(
    rows=st.lists(
        st.tuples(st.integers(1, 10**12), st.text(), st.one_of(st.none(), st.text())), min_size=1, max_size=20
    ),
    head=st.lists(st.integers(), max_size=3),
)
def test_as_columns_turns_values_rows_into_one_array_per_column(rows: list[tuple[Any, ...]], head: list[int]) -> None:
    values_sql = ", ".join(["(?, ?, ?)"] * len(rows))
    flat = [x for row in rows for x in row]
    got = as_columns(len(rows), values_sql, [*head, *flat])
    assert got is not None
    source, params = got
    assert source == "unnest(?::int8[], ?::text[], ?::text[]) AS v(column1, column2, column3)"
    assert params[: len(head)] == head
    assert [tuple(r) for r in zip(*params[len(head) :], strict=True)] == rows


def test_as_columns_keeps_values_it_cannot_type() -> None:
    assert as_columns(2, "(?, ?), (?, ?)", [1, "a", 2.5, "b"]) is None  # a float column
    assert as_columns(2, "(?, ?), (?, 1)", [1, "a", 2]) is None  # not plain placeholders
    assert as_columns(2, "(?, ?), (?, ?)", [1, "a", True, "b"]) is None  # a bool is not an int8
    assert as_columns(0, "", []) is None


async def test_a_large_batch_round_trips_every_payload_exactly(backend: SqlStoreBackend) -> None:
    store, sid = await new_session(backend)
    odd = ['"quoted"', "back\\slash", "{braces}", "comma, space", "NULL", "", "ünïcødé ✓", "tab\tnew\nline"]
    events = [{"type": "x.event", "id": f"evt_{i}", "text": odd[i % len(odd)], "n": i} for i in range(100)]
    written = await store.append(sid, events, fence=0)
    assert [e.seq for e in written] == list(range(1, 101))
    page = await store.events(sid, limit=1000)
    assert [e.data["text"] for e in page.items] == [e["text"] for e in events]
    assert [e.id for e in page.items] == [f"evt_{i}" for i in range(100)]
    # The same batch again writes nothing; half of it with new ids writes only those, gapless.
    assert await store.append(sid, events, fence=0) == written
    more = [{"type": "x.event", "id": f"evt_{i}", "n": i} for i in range(50, 150)]
    again = await store.append(sid, more, fence=0)
    assert [e.seq for e in again[50:]] == list(range(101, 151))
    assert again[:50] == written[50:]
    posted = await store.post(
        sid, [{"type": "user.message", "id": f"evt_in{i}", "text": odd[i % 8]} for i in range(20)]
    )
    assert [p.position for p in posted] == list(range(1, 21))
    assert [p.data["text"] for p in (await store.pending(sid)).items] == [odd[i % 8] for i in range(20)]
