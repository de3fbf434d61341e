"""Postgres lookups by event id on the promote and status-change paths: served by the unique event-id index.

The one-statement append leaves dedup to the unique event-id index (see tests/test_pg_append.py). The inbox
promote and the status-change unit look ids up: ``NOT EXISTS`` guards on ``session_events``, the promote's
updates and insert on ``session_inbox``. Every index of the two tables starts with ``(tenant_id, session_id)``;
before a table's first ANALYZE the planner costs them all the same for such a lookup, and served by another
one the lookup filtered every row of the session, so those writes slowed down with the session's length.
Migration 0012 leads the event-id indexes with the event id and the engine's lookups give the planner no other
indexable condition; several ids are looked up one by one.
These tests check the entries read per write and the plans, on tables without statistics and after ANALYZE.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from openma.adapters.postgres import PostgresClient
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.sessions import SqlSessionStore
from openma.ports.sql import Statement
from openma.ports.tenancy import TenantRef
from openma.settings import Settings
from tests.fixtures.pg_stats import entries_read

pytestmark = pytest.mark.anyio

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"
TABLES = ("session_events", "session_inbox")
#: Events already in the session, and inputs posted to it, before the measured writes.
EARLIER = 600
WRITES = 20
#: Entries read per measured write that lookups by the event-id index stay well under; a lookup that
#: filters the session reads the session's rows (EARLIER and more) on every write.
PER_WRITE = 30
#: A scan of the event log or the inbox in a plan, and the index it uses (none for a sequential scan).
SCAN = re.compile(r"(?:Index Only Scan|Index Scan|Seq Scan) (?:using (\w+) )?on (session_\w+)")
#: A bitmap index scan names only its index.
BITMAP = re.compile(r"Bitmap Index Scan on ((session_(?:events|inbox))_\w+)")


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


async def forget_statistics(client: Any) -> None:
    """Make the two tables look never analyzed (as in a new database), whatever ran on this database before."""
    for table in TABLES:
        await client.execute("DELETE FROM pg_statistic WHERE starelid = ?::regclass", (table,))
        await client.execute(
            "UPDATE pg_class SET reltuples = -1, relpages = 0, relallvisible = 0 WHERE oid = ?::regclass", (table,)
        )


async def analyze(client: Any) -> None:
    for table in TABLES:
        await client.execute(f"ANALYZE {table}")


async def busy_session(backend: SqlStoreBackend) -> tuple[SqlSessionStore, str]:
    """A session with EARLIER events in its log, EARLIER promoted inputs and 10 * WRITES pending ones."""
    tenant = await backend.tenants.create(name="t")
    store = backend.sessions(TenantRef(tenant.id))
    session = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    await store.append(session.id, [{"type": "x.event", "n": i} for i in range(EARLIER)])
    inputs = [{"type": "user.message", "id": f"evt_in{i}", "text": "hi"} for i in range(EARLIER + 10 * WRITES)]
    await store.post(session.id, inputs)
    await store.promote(session.id, [f"evt_in{i}" for i in range(EARLIER)])
    return store, session.id


async def measured_writes(store: SqlSessionStore, sid: str, client: Any, *, start: int) -> tuple[int, int]:
    """Entries read per write by WRITES promotes (of one input, then of three), then by WRITES status changes."""
    at = (await store.get(sid)).last_seq
    before = await entries_read(client, ("session_events", "session_inbox"))
    for i in range(WRITES):
        ids = [f"evt_in{start + k}" for k in range(3 * i, 3 * i + (1 if i % 2 == 0 else 3))]
        events = await store.promote(sid, ids, fence=0)
        assert [e.id for e in events] == ids
        assert [e.seq for e in events] == list(range(at + 1, at + len(ids) + 1))
        at += len(ids)
    promoting = await entries_read(client, ("session_events", "session_inbox")) - before
    before = await entries_read(client, ("session_events", "session_inbox"))
    for i in range(WRITES):
        count = 1 if i % 2 == 0 else 3
        session, events = await store.set_status(
            sid, "running" if i % 2 == 0 else "idle", events=[{"type": "x.status", "n": k} for k in range(count)]
        )
        assert [e.seq for e in events] == list(range(at + 1, at + count + 1))
        at += count
        assert session.last_seq == at
    return promoting // WRITES, (await entries_read(client, ("session_events", "session_inbox")) - before) // WRITES


@pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
async def test_promote_and_status_change_read_a_few_entries_per_write(backend: SqlStoreBackend, analyzed: bool) -> None:
    store, sid = await busy_session(backend)
    client = backend.client
    await (analyze(client) if analyzed else forget_statistics(client))
    promoting, changing = await measured_writes(store, sid, client, start=EARLIER)
    assert (promoting, changing) < (PER_WRITE, PER_WRITE), (promoting, changing)
    assert max(promoting, changing) < PER_WRITE, (promoting, changing)
    # Retries still write nothing twice and leave the seqs gapless.
    last = (await store.get(sid)).last_seq
    again = await store.promote(sid, [f"evt_in{EARLIER}", f"evt_in{EARLIER + 3}"])
    assert [e.seq for e in again] == [2 * EARLIER + 1, 2 * EARLIER + 2]
    assert (await store.get(sid)).last_seq == last


class Recorder:
    """The statements of every write unit the store runs."""

    def __init__(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[Statement] = []
        run_batch = client.run_batch

        async def recording(statements: Sequence[Statement]) -> Any:
            self.statements.extend(statements)
            return await run_batch(statements)

        monkeypatch.setattr(client, "run_batch", recording)


async def scans(client: Any, statement: Statement) -> list[tuple[str | None, str, str]]:
    """The scans of the event log and the inbox in the plan of ``statement`` (``EXPLAIN``, not run): each
    with its index (``None`` for a sequential scan) and its ``Index Cond`` line."""
    rows = await client.fetch_all(f"EXPLAIN (COSTS OFF) {statement.sql}", statement.params)
    lines = [str(r["QUERY PLAN"]) for r in rows]
    found: list[tuple[str | None, str, str]] = []
    for k, line in enumerate(lines):
        m = BITMAP.search(line) or SCAN.search(line)
        if m is None:
            continue
        depth = len(line) - len(line.lstrip(" -"))
        detail = []
        for below in lines[k + 1 :]:
            if len(below) - len(below.lstrip(" ")) <= depth or below.lstrip().startswith("->"):
                break
            detail.append(below.strip())
        cond = next((d for d in detail if d.startswith("Index Cond:")), "")
        found.append((m.group(1), m.group(2), cond))
    return found


@pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
async def test_every_lookup_of_the_promote_and_the_status_change_uses_the_event_id_index(
    backend: SqlStoreBackend, analyzed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, sid = await busy_session(backend)
    client = backend.client
    await (analyze(client) if analyzed else forget_statistics(client))
    recorder = Recorder(client, monkeypatch)
    await store.promote(sid, [f"evt_in{EARLIER}"])
    await store.promote(sid, [f"evt_in{EARLIER + k}" for k in range(1, 4)])
    await store.set_status(sid, "running", events=[{"type": "x.status"}])
    await store.set_status(sid, "idle", events=[{"type": "x.status"}, {"type": "x.status"}])
    seen = [scan for statement in recorder.statements for scan in await scans(client, statement)]
    assert {table for _, table, _ in seen} == set(TABLES)
    for index, table, cond in seen:
        # The whole key: a scan by the index's (tenant_id, session_id) prefix reads the session's rows.
        assert index == f"{table}_id_idx", seen
        assert cond.startswith("Index Cond: (event_id = "), seen
