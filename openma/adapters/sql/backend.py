"""The SQL store family as a :class:`~openma.ports.backend.StoreBackend`, over one engine.

The backend is engine-agnostic: everything that differs between engines (the lease lock, the wake-up
channel, the one-statement append, the migrations folder) comes from its
:class:`~openma.adapters.sql.engine.SqlEngine`.
"""

from __future__ import annotations

from openma.adapters.sql import migrate as migrations
from openma.adapters.sql.agents import SqlAgentStore
from openma.adapters.sql.credentials import SqlCredentialStore
from openma.adapters.sql.engine import SqlEngine, engine_of
from openma.adapters.sql.environments import SqlEnvironmentStore
from openma.adapters.sql.kv import SqlKVStore
from openma.adapters.sql.runnable import SqlRunnableIndex
from openma.adapters.sql.session_secrets import SqlSessionSecretStore
from openma.adapters.sql.sessions import SqlSessionStore
from openma.adapters.sql.tenants import SqlTenantStore
from openma.adapters.sql.usage import SqlUsageStore
from openma.adapters.sql.vaults import SqlVaultStore
from openma.adapters.sql.wakeups import SessionWakeups
from openma.adapters.telemetry_sql import SqlTelemetry
from openma.core.clock import Clock, SystemClock
from openma.ports.backend import SessionSettings
from openma.ports.blobs import BlobStore
from openma.ports.lease import LeaseLock
from openma.ports.sealing import Sealer
from openma.ports.sql import SqlClient
from openma.ports.telemetry import NullTelemetry, Telemetry
from openma.ports.tenancy import TenantRef
from openma.settings import Settings


class SqlStoreBackend:
    """Every built-in store over one engine's :class:`~openma.ports.sql.SqlClient`.

    ``engine`` is a :class:`~openma.adapters.sql.engine.SqlEngine`; a built-in engine's client is accepted
    too and bound to its engine (:func:`~openma.adapters.sql.engine.engine_of`).
    """

    def __init__(self, name: str, engine: SqlEngine | SqlClient, clock: Clock | None = None) -> None:
        self.name = name
        self.engine = engine_of(engine)
        self.client = self.engine.client
        self.clock = clock or SystemClock()
        self._tenants = SqlTenantStore(self.client, self.clock)
        self._wakeups: SessionWakeups | None = None
        self._lease_lock: LeaseLock | None = None
        self._telemetry: Telemetry = NullTelemetry()

    def __repr__(self) -> str:
        return f"SqlStoreBackend({self.name!r}, {self.client!r})"

    @property
    def telemetry(self) -> Telemetry:
        """Where the stores, the engine, the listener and the locks report what they recover from."""
        return self._telemetry

    @telemetry.setter
    def telemetry(self, sink: Telemetry) -> None:
        self._telemetry = sink
        listener = self._wakeups.listener if self._wakeups is not None else None
        for part in (self.client, self._wakeups, listener, self._lease_lock):
            if part is not None and hasattr(part, "telemetry"):
                part.telemetry = sink

    @property
    def tenants(self) -> SqlTenantStore:
        return self._tenants

    def agents(self, tenant: TenantRef) -> SqlAgentStore:
        return SqlAgentStore(self.client, tenant, self.clock)

    def environments(self, tenant: TenantRef) -> SqlEnvironmentStore:
        return SqlEnvironmentStore(self.client, tenant, self.clock)

    def kv(self, tenant: TenantRef) -> SqlKVStore:
        return SqlKVStore(self.client, tenant, self.clock)

    def vaults(self, tenant: TenantRef) -> SqlVaultStore:
        return SqlVaultStore(self.client, tenant, self.clock)

    def usage(self, tenant: TenantRef) -> SqlUsageStore:
        return SqlUsageStore(self.client, tenant, self.clock)

    def telemetry_dataset(self) -> SqlTelemetry:
        """A telemetry sink writing to this backend's ``telemetry_events`` table (see ``telemetry_sql``)."""
        return SqlTelemetry(self.client)

    def credentials(self, tenant: TenantRef, keys: Sealer) -> SqlCredentialStore:
        return SqlCredentialStore(self.client, tenant, keys, self.clock)

    def session_secrets(self, tenant: TenantRef, keys: Sealer) -> SqlSessionSecretStore:
        return SqlSessionSecretStore(self.client, tenant, keys, self.clock)

    def sessions(
        self, tenant: TenantRef, *, blobs: BlobStore | None = None, settings: SessionSettings | None = None
    ) -> SqlSessionStore:
        """Sessions and event logs; spilled events go to ``blobs``. Wake-ups are shared by every tenant."""
        settings = settings if settings is not None else Settings()
        if self._wakeups is None:
            self._wakeups = SessionWakeups(self.engine, poll_interval=settings.sqlite_poll_interval)
            self._wakeups.telemetry = self._telemetry
        return SqlSessionStore(
            self.client,
            tenant,
            self.clock,
            wakeups=self._wakeups,
            blobs=blobs,
            spill_bytes=settings.event_spill_bytes,
            telemetry=self._telemetry,
        )

    def runnable_index(self, settings: SessionSettings | None = None) -> SqlRunnableIndex:
        """The cross-tenant runnable index and wake-ups workers read (admin; shares the sessions' wake-ups)."""
        if self._wakeups is None:
            settings = settings if settings is not None else Settings()
            self._wakeups = SessionWakeups(self.engine, poll_interval=settings.sqlite_poll_interval)
            self._wakeups.telemetry = self._telemetry
        return SqlRunnableIndex(self.client, self._wakeups, self.clock)

    def lease_lock(self) -> LeaseLock:
        """The lock under session actors, made by the engine once (closed with the backend)."""
        if self._lease_lock is None:
            self._lease_lock = self.engine.lease_lock(self._telemetry)
        return self._lease_lock

    async def migrate(self) -> list[str]:
        return await migrations.migrate(self.client, self.engine.migrations)

    async def aclose(self) -> None:
        if self._lease_lock is not None:
            await self._lease_lock.aclose()
        if self._wakeups is not None:
            await self._wakeups.aclose()
        await self.client.aclose()
