"""Retries are the normal case: re-posting, re-opening, re-promoting, re-appending write nothing twice and raise
nothing, and on Postgres no failed write unit, of any kind, leaves its pooled connection unusable.

The Postgres tests run on a pool of ONE connection, so a connection poisoned by a failed unit (psycopg believing a
statement is prepared that the server never prepared) would fail the very next call. Nothing may be printed.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from openma.adapters.postgres import PostgresClient
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.sessions import SqlSessionStore
from openma.errors import Conflict
from openma.ports.sql import Statement
from openma.ports.tenancy import TenantRef
from openma.settings import Settings
from openma.testing.pgserver import PgServer
from tests.fixtures.engines import open_sqlite_backend

pytestmark = pytest.mark.anyio

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"
STREAM = "stm_01h0000000000000000000000z"
#: More than psycopg's prepare threshold (5): every statement gets prepared on the way.
ROUNDS = 12


class Spy:
    """Counts the write units that failed inside a pipeline (Postgres), which retries must never cause."""

    def __init__(self, backend: SqlStoreBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failures = 0
        client = backend.client
        if isinstance(client, PostgresClient):
            original = client._after_pipeline_error

            async def counting(conn: Any) -> None:
                self.failures += 1
                await original(conn)

            monkeypatch.setattr(client, "_after_pipeline_error", counting)


async def open_single(engine: str, url: str) -> SqlStoreBackend:
    if engine == "sqlite":
        return await open_sqlite_backend(Path(url))
    settings = Settings(postgres_url=url, pg_pool_min_size=1, pg_pool_max_size=1)
    return SqlStoreBackend("pg", await PostgresClient.open(url, settings))


@pytest.fixture
async def backend(engine: str, engine_url: str) -> AsyncIterator[SqlStoreBackend]:
    """The engine's backend; on Postgres with a pool of a single connection."""
    b = await open_single(engine, engine_url)
    try:
        yield b
    finally:
        await b.aclose()


async def new_session(backend: SqlStoreBackend) -> tuple[SqlSessionStore, str]:
    tenant = await backend.tenants.create(name="t")
    store = backend.sessions(TenantRef(tenant.id))
    session = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    return store, session.id


def quiet(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Nothing printed, and nothing logged that would print (pytest captures log records before stderr)."""
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_reposting_inbox_ids_writes_once_and_keeps_positions_gapless(
    backend: SqlStoreBackend,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    spy = Spy(backend, monkeypatch)
    store, sid = await new_session(backend)
    [first] = await store.post(sid, [{"type": "user.message", "id": "evt_a", "text": "a"}])
    for _ in range(ROUNDS):
        [again] = await store.post(sid, [{"type": "user.message", "id": "evt_a", "text": "a"}])
        assert again == first
    # A batch mixing a known id and new ones: the new ones take the next positions, no gap.
    items = await store.post(
        sid,
        [
            {"type": "user.message", "id": "evt_b", "text": "b"},
            {"type": "user.message", "id": "evt_a", "text": "a"},
            {"type": "user.message", "id": "evt_c", "text": "c"},
        ],
    )
    assert [(i.event_id, i.position) for i in items] == [("evt_b", 2), ("evt_a", 1), ("evt_c", 3)]
    [d] = await store.post(sid, [{"type": "user.message", "id": "evt_d", "text": "d"}])
    assert d.position == 4
    assert [i.event_id for i in await store.pending(sid)] == ["evt_a", "evt_b", "evt_c", "evt_d"]
    assert spy.failures == 0
    quiet(capfd, caplog)


async def test_reopening_a_stream_returns_it(
    backend: SqlStoreBackend,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    spy = Spy(backend, monkeypatch)
    store, sid = await new_session(backend)
    opened = await store.open_stream(sid, stream_id=STREAM)
    await store.append_stream(sid, STREAM, ["he", "llo"])
    for _ in range(ROUNDS):
        again = await store.open_stream(sid, stream_id=STREAM, fence=0)
        assert (again.id, again.status, again.text, again.started_at) == (STREAM, "open", "hello", opened.started_at)
    assert len(await store.streams(sid)) == 1
    assert spy.failures == 0
    quiet(capfd, caplog)


async def test_promoting_inputs_already_in_the_log(
    backend: SqlStoreBackend,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    spy = Spy(backend, monkeypatch)
    store, sid = await new_session(backend)
    await store.post(sid, [{"type": "user.message", "id": f"evt_{i}", "text": str(i)} for i in range(3)])
    # evt_1 reached the log directly (an at-least-once client appended it too).
    [logged] = await store.append(sid, [{"type": "user.message", "id": "evt_1", "text": "1"}])
    promoted = await store.promote(sid, ["evt_0", "evt_1", "evt_2"], fence=0)
    assert [e.id for e in promoted] == ["evt_0", "evt_1", "evt_2"]
    assert promoted[1] == logged
    for _ in range(ROUNDS):
        assert await store.promote(sid, ["evt_0", "evt_1", "evt_2"]) == promoted
    assert (await store.pending(sid)).items == []
    page = await store.events(sid)
    assert [e.id for e in page.items] == ["evt_1", "evt_0", "evt_2"]
    assert [e.seq for e in page.items] == [1, 2, 3]
    assert spy.failures == 0
    quiet(capfd, caplog)


async def test_reappending_and_retried_transitions(
    backend: SqlStoreBackend,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    spy = Spy(backend, monkeypatch)
    store, sid = await new_session(backend)
    [a] = await store.append(sid, [{"type": "x.event", "id": "evt_a"}])
    for _ in range(ROUNDS):
        assert await store.append(sid, [{"type": "x.event", "id": "evt_a"}]) == [a]
        assert await store.append(sid, [{"type": "x.event", "id": "evt_a"}], fence=0) == [a]
    [b, a2] = await store.append(sid, [{"type": "x.event", "id": "evt_b"}, {"type": "x.event", "id": "evt_a"}])
    assert (a2, b.seq) == (a, 2)
    _, [c] = await store.set_status(sid, "running", events=[{"type": "session.status", "id": "evt_c"}])
    for _ in range(ROUNDS):
        session, [c2] = await store.set_status(sid, "running", events=[{"type": "session.status", "id": "evt_c"}])
        assert (session.status, c2) == ("running", c)
    with pytest.raises(Conflict):  # the same transition with an event it never wrote is not a retry
        await store.set_status(sid, "running", events=[{"type": "session.status", "id": "evt_z"}])
    assert [e.seq for e in (await store.events(sid)).items] == [1, 2, 3]
    assert spy.failures == 0
    quiet(capfd, caplog)


# -- any failed unit, on Postgres


def failing_units(tenant_id: str) -> list[list[Statement]]:
    """Write units that fail in the server at various places: first, middle, last, after a checked segment."""
    dup = Statement("INSERT INTO tenants (id, name, metadata, created_at) VALUES (?, 'dup', '{}', 0)", (tenant_id,))
    ok = Statement("UPDATE tenants SET name = name WHERE id = ?", (tenant_id,))
    checked = Statement(
        "UPDATE tenants SET name = name WHERE id = ? RETURNING id", (tenant_id,), fetch=True, expect_rows=True
    )
    check = Statement(  # a CHECK violation: a KV entry with both a value and a counter
        "INSERT INTO kv_entries (tenant_id, key, value, counter, expires_at, updated_at)"
        " VALUES (?, 'k', 'v', 1, NULL, 0)",
        (tenant_id,),
    )
    null = Statement("INSERT INTO tenants (id, name, metadata, created_at) VALUES ('tnt_n', NULL, '{}', 0)")
    zero = Statement("SELECT 1 / (? - ?)", (1, 1), fetch=True)
    missing = Statement("SELECT * FROM no_such_table")
    return [
        [dup, ok],
        [ok, dup, ok],
        [ok, ok, dup],
        [checked, ok, dup, ok],
        [checked, zero, ok],
        [ok, check],
        [checked, null, ok],
        [checked, missing, ok],
        [ok, ok, zero, ok, ok],
    ]


@pytest.mark.postgres
async def test_every_failed_unit_leaves_the_only_connection_usable(
    pg_url: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await open_single("postgres", pg_url)
    try:
        client = backend.client
        tenant = await backend.tenants.create(name="t")
        store, sid = await new_session(backend)
        units = failing_units(tenant.id)
        healthy = [
            Statement(
                "UPDATE tenants SET name = name WHERE id = ? RETURNING id", (tenant.id,), fetch=True, expect_rows=True
            ),
            Statement("UPDATE tenants SET name = name WHERE id = ?", (tenant.id,)),
            Statement("SELECT 1 / (? - ?)", (2, 1), fetch=True),
            Statement("UPDATE tenants SET name = name WHERE id = ?", (tenant.id,)),
        ]
        for round_ in range(ROUNDS):
            for unit in units:
                with pytest.raises(psycopg.Error) as info:
                    await client.run_batch(unit)
                assert "prepared statement" not in str(info.value)
                assert "aborted" not in str(info.value)
                # The very next calls, on the same (only) connection, work: pipelined, single, in a transaction.
                assert (await client.run_batch(healthy)).committed
                assert await client.fetch_one("SELECT ?::int AS n", (round_,)) == {"n": round_}
                async with client.transaction() as tx:
                    assert await tx.fetch_one("SELECT id FROM tenants WHERE id = ?", (tenant.id,)) == {"id": tenant.id}
                await store.append(sid, [{"type": "x.event"}])
            # A failed statement inside a transaction, and a failed executemany, leave it usable too.
            with pytest.raises(psycopg.Error):
                async with client.transaction() as tx:
                    await tx.execute("UPDATE tenants SET name = name WHERE id = ?", (tenant.id,))
                    await tx.execute(units[0][0].sql, units[0][0].params)
            with pytest.raises(psycopg.Error):
                await client.executemany(units[0][0].sql, [units[0][0].params] * 3)
            assert (await client.run_batch(healthy)).committed
        assert (await store.get(sid)).last_seq == ROUNDS * len(units)
        assert client.pool.get_stats().get("connections_num", 1) == 1
    finally:
        await backend.aclose()
    quiet(capfd, caplog)


# -- descriptors numbered 1024 and above


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Occupy the descriptors below 1100, so every connection opened now gets a number select(2) refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1400
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    fds: list[int] = []
    try:
        while not fds or max(fds) < 1100:
            fds.extend(os.pipe())
        yield
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.postgres
async def test_pool_works_with_descriptors_above_1024(
    pg_server: PgServer,
    pg_url: str,
    high_descriptors: None,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(postgres_url=pg_url, pg_pool_min_size=2, pg_pool_max_size=2)
    client = await PostgresClient.open(pg_url, settings)
    try:
        async with client._connection() as conn:
            assert conn.pgconn.socket >= 1024
        for i in range(50):
            assert await client.fetch_one("SELECT ?::int AS n", (i,)) == {"n": i}
        quiet(capfd, caplog)  # no connection was taken for dead and discarded
        # The idle check still sees a terminated backend (and the call after it still works).
        assert pg_server.terminate_backends(pg_url.rsplit("/", 1)[1]) >= 1
        for i in range(10):
            assert await client.fetch_one("SELECT ?::int AS n", (i,)) == {"n": i}
    finally:
        await client.aclose()


@pytest.mark.postgres
async def test_concurrent_retries_never_fail_a_unit(
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Racing retries on several connections: posts, promotions and stream opens still raise nothing."""
    settings = Settings(postgres_url=pg_url, pg_pool_min_size=4, pg_pool_max_size=4)
    backend = SqlStoreBackend("pg", await PostgresClient.open(pg_url, settings))
    try:
        spy = Spy(backend, monkeypatch)
        store, sid = await new_session(backend)
        batch = [{"type": "user.message", "id": f"evt_{i}", "text": str(i)} for i in range(4)]
        results: list[Any] = []

        async def retry() -> None:
            posted = await store.post(sid, batch)
            stream = await store.open_stream(sid, stream_id=STREAM)
            promoted = await store.promote(sid, ["evt_0", "evt_1"])
            results.append(([(i.event_id, i.position) for i in posted], stream.id, [e.seq for e in promoted]))

        for _ in range(3):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(retry)
        assert {repr(r) for r in results} == {repr(results[0])}
        assert sorted(p for _, p in results[0][0]) == [1, 2, 3, 4]
        assert [i.event_id for i in await store.pending(sid)] == ["evt_2", "evt_3"]
        assert spy.failures == 0
    finally:
        await backend.aclose()
    quiet(capfd, caplog)
