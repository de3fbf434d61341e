"""Tenants on the SQL family."""

from __future__ import annotations

from typing import Any

from openma.adapters.sql.listing import list_page
from openma.core import validate
from openma.core.clock import Clock, SystemClock, ms_to_datetime
from openma.core.ids import check_id, new_id
from openma.core.jsonutil import dumps, loads
from openma.core.pagination import Order
from openma.errors import NotFound
from openma.models import Page, Tenant
from openma.ports.sql import Row, SqlClient, Statement


def _tenant(row: Row) -> Tenant:
    return Tenant(
        id=row["id"],
        name=row["name"],
        metadata=loads(row["metadata"]),
        created_at=ms_to_datetime(row["created_at"]),
        archived_at=ms_to_datetime(row["archived_at"]) if row["archived_at"] is not None else None,
    )


class SqlTenantStore:
    def __init__(self, client: SqlClient, clock: Clock | None = None) -> None:
        self._db = client
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"SqlTenantStore({self._db!r})"

    async def create(self, *, name: str, metadata: dict[str, Any] | None = None) -> Tenant:
        name = validate.name(name)
        meta = validate.metadata(metadata)
        now = self._clock.now_ms()
        tenant_id = new_id("tnt", now_ms=now)
        await self._db.run_batch(
            [
                Statement(
                    "INSERT INTO tenants (id, name, metadata, created_at, archived_at) VALUES (?, ?, ?, ?, NULL)",
                    (tenant_id, name, dumps(meta), now),
                )
            ]
        )
        return Tenant(tenant_id, name, meta, ms_to_datetime(now), None)

    async def get(self, tenant_id: str) -> Tenant:
        check_id(tenant_id, "tnt", what="tenant_id")
        row = await self._db.fetch_one("SELECT * FROM tenants WHERE id = ?", (tenant_id,))
        if row is None:
            raise NotFound(f"tenant {tenant_id} not found", tenant_id=tenant_id)
        return _tenant(row)

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        include_archived: bool = False,
    ) -> Page[Tenant]:
        include_archived = validate.flag(include_archived, "include_archived")
        where = ["1 = 1"] if include_archived else ["archived_at IS NULL"]
        return await list_page(
            self._db,
            table="tenants",
            where=where,
            params=[],
            scope=(bool(include_archived),),
            cursor=cursor,
            order=order,
            limit=limit,
            to_model=_tenant,
        )

    async def archive(self, tenant_id: str) -> Tenant:
        check_id(tenant_id, "tnt", what="tenant_id")
        result = await self._db.run_batch(
            [
                Statement(
                    "UPDATE tenants SET archived_at = COALESCE(archived_at, ?) WHERE id = ? RETURNING *",
                    (self._clock.now_ms(), tenant_id),
                    fetch=True,
                    expect_rows=True,
                )
            ]
        )
        if not result.committed:
            raise NotFound(f"tenant {tenant_id} not found", tenant_id=tenant_id)
        return _tenant(result.rows[0][0])
