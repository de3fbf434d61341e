"""The SQL store family as a :class:`~openma.ports.backend.StoreBackend`."""

from __future__ import annotations

from openma.adapters.sql import migrate as migrations
from openma.adapters.sql.agents import SqlAgentStore
from openma.adapters.sql.environments import SqlEnvironmentStore
from openma.adapters.sql.kv import SqlKVStore
from openma.adapters.sql.tenants import SqlTenantStore
from openma.core.clock import Clock, SystemClock
from openma.ports.sql import SqlClient
from openma.ports.tenancy import TenantRef


class SqlStoreBackend:
    """Every built-in store over one :class:`~openma.ports.sql.SqlClient`."""

    def __init__(self, name: str, client: SqlClient, clock: Clock | None = None) -> None:
        self.name = name
        self.client = client
        self.clock = clock or SystemClock()
        self._tenants = SqlTenantStore(client, self.clock)

    def __repr__(self) -> str:
        return f"SqlStoreBackend({self.name!r}, {self.client!r})"

    @property
    def tenants(self) -> SqlTenantStore:
        return self._tenants

    def agents(self, tenant: TenantRef) -> SqlAgentStore:
        return SqlAgentStore(self.client, tenant, self.clock)

    def environments(self, tenant: TenantRef) -> SqlEnvironmentStore:
        return SqlEnvironmentStore(self.client, tenant, self.clock)

    def kv(self, tenant: TenantRef) -> SqlKVStore:
        return SqlKVStore(self.client, tenant, self.clock)

    async def migrate(self) -> list[str]:
        return await migrations.migrate(self.client)

    async def aclose(self) -> None:
        await self.client.aclose()
