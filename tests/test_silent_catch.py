"""Failures the SQL adapters catch and carry on from are never silent: each one is a ``silent_catch`` record.

Real failures are injected: a blob store whose deletes fail, a LISTEN connection and a lease connection
terminated on the server (``pg_terminate_backend``), a rollback that fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from openma import Platform
from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.postgres import PostgresClient
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.telemetry import MemoryTelemetry
from openma.errors import LeaseLost
from openma.ports.sql import Statement
from openma.ports.tenancy import TenantRef
from openma.settings import Settings
from openma.testing.pgserver import PgServer

pytestmark = pytest.mark.anyio

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"


class UndeletableBlobs:
    """A real blob store whose deletes fail."""

    def __init__(self, inner: FsspecBlobStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def delete(self, key: str) -> None:
        raise PermissionError(f"delete of {key} refused")


def silent(telemetry: MemoryTelemetry, where: str) -> list[dict[str, Any]]:
    return [r for r in telemetry.of("silent_catch") if r["where"] == where]


async def test_a_blob_that_cannot_be_dropped_is_reported(store_backend: SqlStoreBackend, tmp_path: Path) -> None:
    telemetry = MemoryTelemetry()
    store_backend.telemetry = telemetry
    tenant = await store_backend.tenants.create(name="t")
    root = await FsspecBlobStore.open(f"file://{tmp_path}/blobs")
    blobs = UndeletableBlobs(root.for_tenant(tenant.id, internal=True))
    store = store_backend.sessions(TenantRef(tenant.id), blobs=blobs, settings=Settings(event_spill_bytes=100))  # type: ignore[arg-type]
    session = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    # A stale fence refuses the append after its big event was spilled: the spilled blob must go again.
    with pytest.raises(LeaseLost):
        await store.append(session.id, [{"type": "user.message", "text": "x" * 500}], fence=7)
    [record] = silent(telemetry, "sessions.drop_blobs")
    assert record["error"] == "PermissionError" and record["tenant_id"] == tenant.id
    assert record["key"] in record["message"]


async def test_the_platform_hands_its_sink_to_the_backends(tmp_path: Path) -> None:
    telemetry = MemoryTelemetry()
    settings = Settings(sqlite_path=str(tmp_path / "db.sqlite"), blob_url=f"file://{tmp_path}/blobs")
    async with Platform.open(settings, telemetry=telemetry) as platform:
        backend = platform.backend("sessions")
        assert isinstance(backend, SqlStoreBackend) and backend.telemetry is telemetry
        tenant = await platform.tenants.create(name="t")
        sessions = backend.sessions(TenantRef(tenant.id))
        assert sessions.telemetry is telemetry


@pytest.mark.postgres
async def test_a_terminated_listen_connection_is_reported(pg_server: PgServer, pg_url: str) -> None:
    telemetry = MemoryTelemetry()
    backend = SqlStoreBackend("pg", await PostgresClient.open(pg_url))
    backend.telemetry = telemetry
    try:
        tenant = await backend.tenants.create(name="t")
        backend.sessions(TenantRef(tenant.id))
        wakeups = backend._wakeups
        assert wakeups is not None
        wakeups.start()
        listener = wakeups.listener
        assert listener is not None and await listener.wait_listening(10)
        pg_server.terminate_backends(pg_url.rsplit("/", 1)[1])
        assert await listener.wait_connects(2, 10)
        [record] = silent(telemetry, "pg_notify.listen")
        assert record["error"] in ("AdminShutdown", "OperationalError")
    finally:
        await backend.aclose()


@pytest.mark.postgres
async def test_a_failed_unlock_is_reported(pg_server: PgServer, pg_url: str) -> None:
    telemetry = MemoryTelemetry()
    backend = SqlStoreBackend("pg", await PostgresClient.open(pg_url))
    backend.telemetry = telemetry
    try:
        lock = backend.lease_lock()
        handle = await lock.acquire("lease:one", wait=1)
        pg_server.terminate_backends(pg_url.rsplit("/", 1)[1])
        await handle.release()
        [record] = silent(telemetry, "pg_advisory.unlock")
        assert record["key"] == "lease:one"
        assert record["error"] in ("AdminShutdown", "OperationalError", "InterfaceError")
        # The lock went with its connection: it can be taken again at once.
        again = await lock.acquire("lease:one", wait=1)
        await again.release()
    finally:
        await backend.aclose()


@pytest.mark.postgres
async def test_a_connection_that_cannot_be_reset_is_reported_and_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    telemetry = MemoryTelemetry()
    settings = Settings(postgres_url=pg_url, pg_pool_min_size=1, pg_pool_max_size=1)
    backend = SqlStoreBackend("pg", await PostgresClient.open(pg_url, settings))
    backend.telemetry = telemetry
    try:

        async def refuse(self: Any) -> None:
            raise psycopg.OperationalError("rollback refused")

        monkeypatch.setattr(psycopg.AsyncConnection, "rollback", refuse)
        failing = [Statement("SELECT 1"), Statement("SELECT * FROM no_such_table")]
        with pytest.raises(psycopg.errors.UndefinedTable):
            await backend.client.run_batch(failing)
        [record] = silent(telemetry, "postgres.reset_connection")
        assert record["error"] == "OperationalError" and record["message"] == "rollback refused"
        monkeypatch.undo()
        assert await backend.client.fetch_one("SELECT 1 AS one") == {"one": 1}
    finally:
        await backend.aclose()
