"""Environments on the SQL family."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from openma.adapters.sql.archive import archive_row
from openma.adapters.sql.listing import created_between, list_page
from openma.core import validate
from openma.core.clock import Clock, SystemClock, ms_to_datetime
from openma.core.ids import check_id, new_id
from openma.core.jsonutil import dumps, loads
from openma.core.pagination import Order
from openma.errors import Conflict, InvalidInput, NotFound
from openma.models import Environment, Page
from openma.ports.environments import UPDATABLE_ENVIRONMENT_FIELDS
from openma.ports.sql import Row, SqlClient, Statement
from openma.ports.tenancy import TenantRef

MAX_CONFIG_BYTES: Final = 256_000
MAX_DESCRIPTION: Final = 10_000
UPDATE_RETRIES: Final = 5


def _environment(row: Row) -> Environment:
    return Environment(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        description=row["description"],
        config=loads(row["config"]),
        metadata=loads(row["metadata"]),
        created_at=ms_to_datetime(row["created_at"]),
        updated_at=ms_to_datetime(row["updated_at"]),
        archived_at=ms_to_datetime(row["archived_at"]) if row["archived_at"] is not None else None,
    )


class SqlEnvironmentStore:
    def __init__(self, client: SqlClient, tenant: TenantRef, clock: Clock | None = None) -> None:
        self._db = client
        self._tenant = tenant
        self.tenant_id = tenant.tenant_id
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"SqlEnvironmentStore(tenant_id={self.tenant_id!r})"

    async def create(
        self,
        *,
        name: str,
        config: dict[str, Any] | None = None,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> Environment:
        name = validate.name(name)
        cfg = validate.json_object(config, "config", max_bytes=MAX_CONFIG_BYTES)
        description = validate.text(description, "description", max_len=MAX_DESCRIPTION)
        meta = validate.metadata(metadata)
        await self._tenant.ensure()
        now = self._clock.now_ms()
        env_id = new_id("env", now_ms=now)
        await self._db.run_batch(
            [
                Statement(
                    "INSERT INTO environments (tenant_id, id, name, name_search, description, config, metadata,"
                    " created_at, updated_at, archived_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        self.tenant_id,
                        env_id,
                        name,
                        validate.search_key(name),
                        description,
                        dumps(cfg),
                        dumps(meta),
                        now,
                        now,
                    ),
                )
            ]
        )
        created = ms_to_datetime(now)
        return Environment(env_id, self.tenant_id, name, description, cfg, meta, created, created, None)

    async def _row(self, environment_id: str) -> Row:
        check_id(environment_id, "env", what="environment_id")
        row = await self._db.fetch_one(
            "SELECT * FROM environments WHERE tenant_id = ? AND id = ?", (self.tenant_id, environment_id)
        )
        if row is None:
            raise NotFound(f"environment {environment_id} not found", environment_id=environment_id)
        return row

    async def get(self, environment_id: str) -> Environment:
        return _environment(await self._row(environment_id))

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        include_archived: bool = False,
        q: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[Environment]:
        include_archived = validate.flag(include_archived, "include_archived")
        where: list[str] = ["tenant_id = ?"]
        params: list[Any] = [self.tenant_id]
        if not include_archived:
            where.append("archived_at IS NULL")
        if q is not None:
            where.append("name_search LIKE ? ESCAPE '\\'")
            params.append(validate.like_pattern(q))
        after, before = created_between(where, params, created_after, created_before)
        return await list_page(
            self._db,
            table="environments",
            where=where,
            params=params,
            scope=(self.tenant_id, bool(include_archived), q, after, before),
            cursor=cursor,
            order=order,
            limit=limit,
            to_model=_environment,
        )

    async def update(self, environment_id: str, **changes: Any) -> Environment:
        for field in changes:
            if field not in UPDATABLE_ENVIRONMENT_FIELDS:
                raise InvalidInput(
                    f"environments.update got unknown field {field!r}; "
                    f"updatable: {', '.join(UPDATABLE_ENVIRONMENT_FIELDS)}",
                    field=field,
                )
        for _ in range(UPDATE_RETRIES):
            row = await self._row(environment_id)
            current = _environment(row)
            if current.archived_at is not None:
                raise Conflict(f"environment {environment_id} is archived and cannot be updated")
            name, description = current.name, current.description
            config, meta = current.config, current.metadata
            if "name" in changes:
                name = validate.name(changes["name"])
            if "description" in changes:
                value = changes["description"]
                description = validate.text("" if value is None else value, "description", max_len=MAX_DESCRIPTION)
            if "config" in changes:
                config = validate.json_object(changes["config"], "config", max_bytes=MAX_CONFIG_BYTES)
            if "metadata" in changes:
                meta = validate.merge_metadata(current.metadata, changes["metadata"])
            if (name, description, config, meta) == (
                current.name,
                current.description,
                current.config,
                current.metadata,
            ):
                return current
            now = max(self._clock.now_ms(), int(row["updated_at"]))
            # Compare-and-set on updated_at + the stored JSON, so a concurrent update is never overwritten.
            result = await self._db.run_batch(
                [
                    Statement(
                        "UPDATE environments SET name = ?, name_search = ?, description = ?, config = ?,"
                        " metadata = ?, updated_at = ? WHERE tenant_id = ? AND id = ? AND updated_at = ?"
                        " AND config = ? AND metadata = ? AND name = ? AND archived_at IS NULL RETURNING *",
                        (
                            name,
                            validate.search_key(name),
                            description,
                            dumps(config),
                            dumps(meta),
                            now,
                            self.tenant_id,
                            environment_id,
                            row["updated_at"],
                            row["config"],
                            row["metadata"],
                            row["name"],
                        ),
                        fetch=True,
                        expect_rows=True,
                    )
                ]
            )
            if result.committed:
                return _environment(result.rows[0][0])
        raise Conflict(f"environment {environment_id} kept changing under this update; retry")

    async def archive(self, environment_id: str) -> Environment:
        check_id(environment_id, "env", what="environment_id")
        row = await archive_row(
            self._db, "environments", tenant_id=self.tenant_id, row_id=environment_id, now=self._clock.now_ms()
        )
        if row is None:
            raise NotFound(f"environment {environment_id} not found", environment_id=environment_id)
        return _environment(row)

    async def delete(self, environment_id: str) -> None:
        check_id(environment_id, "env", what="environment_id")
        result = await self._db.run_batch(
            [
                Statement(
                    "DELETE FROM environments WHERE tenant_id = ? AND id = ?",
                    (self.tenant_id, environment_id),
                    expect_rows=True,
                )
            ]
        )
        if not result.committed:
            raise NotFound(f"environment {environment_id} not found", environment_id=environment_id)
