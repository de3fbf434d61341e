"""The engine contract: what SqliteEngine and PostgresEngine supply, and how a backend finds its engine."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma.adapters import pg_notify
from openma.adapters.locks.flock import FlockLeaseLock
from openma.adapters.postgres_engine import PostgresEngine
from openma.adapters.sql import wakeups
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.engine import SqlEngine, engine_of
from openma.adapters.sql.migrate import load_migrations
from openma.adapters.sql.wakeups import SessionWakeups
from openma.adapters.sqlite import SqliteClient
from openma.adapters.sqlite_engine import SqliteEngine
from openma.core.tail import WakeHub
from openma.errors import ConfigError
from openma.ports.sql import Statement
from openma.ports.telemetry import NullTelemetry
from openma.ports.tenancy import TenantRef
from openma.registry import store_backends
from tests.fixtures.engines import open_postgres_backend

pytestmark = pytest.mark.anyio

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"
INSERT_HEAD = (
    "INSERT INTO session_events (tenant_id, session_id, seq, event_id, type, data, blob_key, created_at) "
    "SELECT s.tenant_id, s.id, s.last_seq - ? + v.column1, v.column2, v.column3, v.column4, v.column5, ?"
)


@pytest.fixture
async def sqlite_client(tmp_path: Path) -> AsyncIterator[SqliteClient]:
    client = await SqliteClient.open(str(tmp_path / "o.db"), readers=1)
    try:
        yield client
    finally:
        await client.aclose()


class _Wrapper:
    """A client wrapper that delegates everything (what tests and tracers build)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _FakePostgres:
    """Just enough of a Postgres client for the hooks that build statements."""

    conninfo = "host=nowhere dbname=x password=secret"

    @property
    def dialect(self) -> Any:
        from openma.adapters.pg_connect import PostgresDialect

        return PostgresDialect()


# -- SQLite


async def test_sqlite_engine_is_the_portable_engine_with_flock_leases(sqlite_client: SqliteClient) -> None:
    engine = SqliteEngine(sqlite_client)
    assert engine.client is sqlite_client and engine.dialect is sqlite_client.dialect
    assert engine.notify_statement(wakeups.EVENTS, "tnt_x", "ses_y") is None
    assert engine.wakeup_channel(WakeHub(), NullTelemetry()) is None
    fenced = engine.fenced_append_statement(
        tenant_id="t",
        session_id="s",
        count=1,
        guard_sql="",
        guard_params=[],
        insert_sql=INSERT_HEAD,
        values_sql="(?, ?, ?, ?, ?)",
        insert_params=[],
    )
    assert fenced is None
    assert engine.migrations.name == "sqlite"
    assert [m.name for m in load_migrations(engine.migrations)] == [m.name for m in load_migrations("sqlite")]
    lock = engine.lease_lock(NullTelemetry())
    try:
        assert isinstance(lock, FlockLeaseLock)
        assert lock.directory == Path(f"{sqlite_client.path}.leases")
    finally:
        await lock.aclose()
    assert engine.is_unique_violation(sqlite3.IntegrityError("UNIQUE constraint failed: t.id"))
    assert not engine.is_unique_violation(sqlite3.OperationalError("database is locked"))


async def test_wakeups_without_a_channel_poll(sqlite_client: SqliteClient) -> None:
    hub_user = SessionWakeups(SqliteEngine(sqlite_client), poll_interval=0.05)
    hub_user.start()
    hub_user.start()
    assert hub_user.listener is None
    assert hub_user.wait_timeout() == 0.05
    assert hub_user.notify_statement(wakeups.INBOX, "tnt_x", "ses_y") is None
    woken = hub_user.hub.arm((wakeups.INBOX, "tnt_x", "ses_y"))
    hub_user.notify_local(wakeups.INBOX, "tnt_x", "ses_y")
    assert woken.is_set()
    await hub_user.aclose()


# -- Postgres (statements only; no server)


def test_postgres_notify_statement_runs_pg_notify_on_the_channel() -> None:
    engine = PostgresEngine(_FakePostgres())
    assert engine.notify_statement(wakeups.INBOX, "tnt_x", "ses_y") == Statement(
        "SELECT pg_notify(?, ?)", ("openma_events", "i tnt_x ses_y")
    )
    assert engine.migrations.name == "postgres"
    assert engine.is_unique_violation(type("E", (Exception,), {"sqlstate": "23505"})())


def test_postgres_fenced_append_is_the_one_statement_cte() -> None:
    engine = PostgresEngine(_FakePostgres())
    insert_params = [2, 1000, 1, "evt_a", "a", "{}", None, 2, "evt_b", "b", "{}", None]
    st = engine.fenced_append_statement(
        tenant_id="tnt_x",
        session_id="ses_y",
        count=2,
        guard_sql=" AND lease_epoch = ?",
        guard_params=[7],
        insert_sql=INSERT_HEAD,
        values_sql="(?, ?, ?, ?, ?), (?, ?, ?, ?, ?)",
        insert_params=insert_params,
    )
    assert st == Statement(
        "WITH s AS (UPDATE sessions SET last_seq = last_seq + ? WHERE tenant_id = ? AND id = ?"
        " AND deleted_at IS NULL AND lease_epoch = ? RETURNING tenant_id, id, last_seq),"
        " w AS (SELECT pg_notify(?, ?) AS n FROM s) "
        f"{INSERT_HEAD} FROM s, w, (VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)) AS v RETURNING seq, event_id",
        [2, "tnt_x", "ses_y", 7, "openma_events", "e tnt_x ses_y", *insert_params],
        fetch=True,
    )


def test_wake_up_kinds_are_defined_once() -> None:
    assert (wakeups.EVENTS, wakeups.INBOX) == ("e", "i")
    assert (pg_notify.EVENTS, pg_notify.INBOX) == (wakeups.EVENTS, wakeups.INBOX)


# -- finding the engine


async def test_a_backend_takes_an_engine_or_a_client(sqlite_client: SqliteClient) -> None:
    engine = SqliteEngine(sqlite_client)
    by_engine = SqlStoreBackend("cf", engine)
    assert by_engine.engine is engine and by_engine.client is sqlite_client
    by_client = SqlStoreBackend("cf", sqlite_client)
    assert isinstance(by_client.engine, SqliteEngine) and by_client.client is sqlite_client


async def test_a_wrapped_client_keeps_its_engine_and_the_wrapper(sqlite_client: SqliteClient) -> None:
    wrapper = _Wrapper(sqlite_client)
    engine = engine_of(wrapper)  # type: ignore[arg-type]
    assert isinstance(engine, SqliteEngine) and engine.client is wrapper
    lock = engine.lease_lock(NullTelemetry())
    try:
        assert isinstance(lock, FlockLeaseLock) and lock.directory == Path(f"{sqlite_client.path}.leases")
    finally:
        await lock.aclose()
    assert engine_of(engine) is engine


def test_a_client_with_no_engine_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a SqlEngine"):
        engine_of(object())  # type: ignore[arg-type]


async def test_a_third_party_engine_needs_only_a_lease_lock(sqlite_client: SqliteClient) -> None:
    class Minimal(SqlEngine):
        migrations = SqliteEngine.migrations

        def lease_lock(self, telemetry: Any) -> Any:
            return FlockLeaseLock("/nonexistent")

    with pytest.raises(TypeError):
        SqlEngine(sqlite_client)  # type: ignore[abstract]
    engine = Minimal(sqlite_client)
    assert engine.notify_statement("e", "t", "s") is None and engine.wakeup_channel(WakeHub(), NullTelemetry()) is None
    assert isinstance(engine.with_client(sqlite_client), Minimal)


def test_the_registry_points_at_the_engine_modules() -> None:
    from openma.adapters import postgres_engine, sqlite_engine

    assert store_backends.load("cf") is sqlite_engine.open_store_backend
    assert store_backends.load("pg") is postgres_engine.open_store_backend


def test_everything_sqlite_needs_imports_without_the_postgres_driver(tmp_path: Path) -> None:
    code = (
        "import sys, anyio; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "import openma, openma.adapters.postgres_engine\n"
        "from openma.registry import store_backends\n"
        "async def main():\n"
        f"    backend = await store_backends.load('cf')(openma.Settings(sqlite_path={str(tmp_path / 'x.db')!r}))\n"
        "    applied = await backend.migrate()\n"
        "    await backend.lease_lock().aclose()\n"
        "    await backend.aclose()\n"
        "    print(len(applied) > 0, [m for m in sys.modules if m.startswith('psycopg') and sys.modules[m]])\n"
        "anyio.run(main)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True []"


# -- Postgres on a real server


@pytest.mark.postgres
async def test_postgres_backend_uses_the_engine_lock_and_listener(pg_url: str) -> None:
    backend = await open_postgres_backend(pg_url)
    try:
        assert isinstance(backend.engine, PostgresEngine)
        assert backend.client.conninfo == backend.client.pool.conninfo  # type: ignore[attr-defined]
        lock = backend.lease_lock()
        handle = await lock.acquire("ses_x", wait=0)
        assert handle.alive()
        await handle.release()
        store = backend.sessions(TenantRef((await backend.tenants.create(name="t")).id))
        assert store is not None and backend._wakeups is not None
        backend._wakeups.start()
        listener = backend._wakeups.listener
        assert isinstance(listener, pg_notify.PgListener) and await listener.wait_listening(10)
    finally:
        await backend.aclose()


@pytest.mark.postgres
async def test_postgres_fenced_append_appends_notifies_and_refuses_a_stale_fence(pg_url: str) -> None:
    backend = await open_postgres_backend(pg_url)
    try:
        tenant = await backend.tenants.create(name="t")
        store = backend.sessions(TenantRef(tenant.id))
        session = await store.create(
            agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={}
        )
        epoch = await backend.client.fetch_one("SELECT lease_epoch FROM sessions WHERE id = ?", (session.id,))
        assert epoch is not None
        assert backend._wakeups is not None
        backend._wakeups.start()
        listener = backend._wakeups.listener
        assert listener is not None and await listener.wait_listening(10)  # type: ignore[attr-defined]

        def append(fence: int, ids: list[str]) -> Statement:
            values = [x for k, i in enumerate(ids, 1) for x in (k, i, "t.x", json.dumps({"k": k}), None)]
            st = backend.engine.fenced_append_statement(
                tenant_id=tenant.id,
                session_id=session.id,
                count=len(ids),
                guard_sql=" AND lease_epoch = ?",
                guard_params=[fence],
                insert_sql=INSERT_HEAD,
                values_sql=", ".join(["(?, ?, ?, ?, ?)"] * len(ids)),
                insert_params=[len(ids), 1000, *values],
            )
            assert st is not None
            return st

        woken = backend._wakeups.hub.arm((wakeups.EVENTS, tenant.id, session.id))
        result = await backend.client.run_batch([append(epoch["lease_epoch"], ["evt_a", "evt_b"])])
        assert sorted((r["seq"], r["event_id"]) for r in result.rows[0]) == [(1, "evt_a"), (2, "evt_b")]
        with anyio.fail_after(10):
            await woken.wait()  # the NOTIFY came back through LISTEN
        stale = await backend.client.run_batch([append(epoch["lease_epoch"] + 1, ["evt_c"])])
        assert stale.rows[0] == []
        page = await store.events(session.id)
        assert [(e.seq, e.id) for e in page.items] == [(1, "evt_a"), (2, "evt_b")]
    finally:
        await backend.aclose()
