"""Tenants on the SQL family: the one entity table whose rows belong to no tenant."""

from __future__ import annotations

from typing import Any

from openma.adapters.sql.entity import ListOptions, SqlEntityStore
from openma.core import validate
from openma.core.clock import ms_to_datetime
from openma.core.jsonutil import dumps, loads
from openma.models import Order, Page, Tenant
from openma.ports.sql import Row


class SqlTenantStore(SqlEntityStore[Tenant]):
    """Create, read, list and archive tenants (no ``name_search`` or ``updated_at`` column)."""

    table = "tenants"
    prefix = "tnt"
    noun = "tenant"
    searchable = False
    touches = False

    def __repr__(self) -> str:
        return f"SqlTenantStore({self._db!r})"

    def from_row(self, row: Row) -> Tenant:
        return Tenant(**self._common(row), metadata=loads(row["metadata"]))

    async def create(self, *, name: str, metadata: dict[str, Any] | None = None) -> Tenant:
        name = validate.name(name)
        meta = validate.metadata(metadata)
        tenant_id, now = await self._mint()
        await self._db.run_batch([self._insert(tenant_id, now, {"name": name, "metadata": dumps(meta)})])
        return Tenant(tenant_id, name, meta, ms_to_datetime(now), None)

    async def list(
        self, *, limit: int = 50, cursor: str | None = None, order: Order = "desc", include_archived: bool = False
    ) -> Page[Tenant]:
        return await self._page(ListOptions(limit, cursor, order, include_archived), {})
