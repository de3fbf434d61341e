"""Environments on the SQL family."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from openma.adapters.sql.archive import archive_row
from openma.adapters.sql.listing import created_between, list_page
from openma.adapters.sql.partial import PartialUpdate
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
        """Replace ``name``/``description``/``config`` and merge a ``metadata`` patch; only what is named is written.

        The ``UPDATE`` assigns only the named columns and merges the metadata patch into the stored value in
        the same statement, so a concurrent update of another field (or other metadata keys) is never
        reverted. An update that changes nothing returns the environment as read, without a write.
        """
        for field in changes:
            if field not in UPDATABLE_ENVIRONMENT_FIELDS:
                raise InvalidInput(
                    f"environments.update got unknown field {field!r}; "
                    f"updatable: {', '.join(UPDATABLE_ENVIRONMENT_FIELDS)}",
                    field=field,
                )
        wanted: dict[str, Any] = {}
        if "name" in changes:
            wanted["name"] = validate.name(changes["name"])
        if "description" in changes:
            value = changes["description"]
            wanted["description"] = validate.text(
                "" if value is None else value, "description", max_len=MAX_DESCRIPTION
            )
        if "config" in changes:
            wanted["config"] = validate.json_object(changes["config"], "config", max_bytes=MAX_CONFIG_BYTES)
        patch = changes.get("metadata")
        if "metadata" in changes and not isinstance(patch, dict):
            raise InvalidInput("metadata must be an object", field="metadata")
        await self._tenant.ensure()
        for _ in range(UPDATE_RETRIES):
            row = await self._row(environment_id)
            current = _environment(row)
            if current.archived_at is not None:
                raise Conflict(f"environment {environment_id} is archived and cannot be updated")
            # Validates the patch and the merged size against the current row (clear errors before writing).
            meta = validate.merge_metadata(current.metadata, patch) if patch is not None else current.metadata
            if meta == current.metadata and all(getattr(current, f) == v for f, v in wanted.items()):
                return current
            update = PartialUpdate(self._db.dialect)
            if "name" in wanted:
                update.set("name", wanted["name"])
                update.set("name_search", validate.search_key(wanted["name"]))
            if "description" in wanted:
                update.set("description", wanted["description"])
            if "config" in wanted:
                update.set("config", dumps(wanted["config"]))
            if patch:
                update.merge("metadata", patch, read=(row["metadata"], meta))
            result = await self._db.run_batch(
                [
                    update.statement(
                        "environments",
                        "tenant_id = ? AND id = ? AND archived_at IS NULL",
                        (self.tenant_id, environment_id),
                        self._clock.now_ms(),
                    )
                ]
            )
            if result.committed:
                return _environment(result.rows[0][0])
            # Deleted, archived, or the merged metadata would now be over its limits: re-read and report.
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
