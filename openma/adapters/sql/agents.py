"""Agents and their version history on the SQL family.

The optimistic-concurrency check lives in the UPDATE itself (``WHERE version = ?``), and the new version's
history row is written in the same write unit, guarded by that UPDATE: if the UPDATE matched nothing, the
unit rolls back and nothing is written. An update without ``expected_version`` that lost that race is
recomputed and written under the agent's row lock, so it applies on top of the winner instead of failing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import attrs

from openma.adapters.sql.archive import archive_row
from openma.adapters.sql.listing import created_between, list_page
from openma.core import validate
from openma.core.clock import Clock, SystemClock, ms_to_datetime
from openma.core.ids import check_id, new_id
from openma.core.jsonutil import MAX_JSON_DEPTH, dumps, loads
from openma.core.pagination import Order
from openma.errors import Conflict, InvalidInput, NotFound, VersionConflict
from openma.models import Agent, AgentVersion, Page
from openma.ports.agents import UPDATABLE_AGENT_FIELDS
from openma.ports.sql import Row, SqlClient, Statement
from openma.ports.tenancy import TenantRef

MAX_SYSTEM: Final = 200_000
MAX_DESCRIPTION: Final = 10_000
MAX_CONFIG_BYTES: Final = 1_000_000

_CONFIG_FIELDS: Final = ("model", "system", "description", "tools", "mcp_servers", "skills", "metadata")


def _model(value: object) -> str | dict[str, Any]:
    if isinstance(value, str):
        return validate.text(value, "model", max_len=200, min_len=1)
    if isinstance(value, dict):
        if not isinstance(value.get("id"), str):
            raise InvalidInput("model must be a model id string or an object with a string 'id'", field="model")
        validate.text(value["id"], "model.id", max_len=200, min_len=1)
        return validate.json_object(value, "model", max_bytes=4096)
    raise InvalidInput(f"model must be a string or an object, got {type(value).__name__}", field="model")


def _model_id(model: str | dict[str, Any]) -> str:
    return model if isinstance(model, str) else str(model["id"])


def _check_field(field: str, value: Any, current: dict[str, Any] | None = None) -> Any:
    if field == "name":
        return validate.name(value)
    if field == "model":
        return _model(value)
    if field == "system":
        return validate.text("" if value is None else value, "system", max_len=MAX_SYSTEM)
    if field == "description":
        return validate.text("" if value is None else value, "description", max_len=MAX_DESCRIPTION)
    if field in ("tools", "mcp_servers", "skills"):
        return validate.objects(value, field)
    if field == "metadata":
        if current is not None:
            return validate.merge_metadata(current.get("metadata", {}), value)
        return validate.metadata(value)
    raise InvalidInput(
        f"agents.update got unknown field {field!r}; updatable: {', '.join(UPDATABLE_AGENT_FIELDS)}",
        field=field,
    )


def _config_text(config: dict[str, Any]) -> str:
    text = dumps(config, what="agent", max_depth=MAX_JSON_DEPTH + 1)  # the checked fields, one level down
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"agent definition is too large (> {MAX_CONFIG_BYTES} bytes)")
    return text


def _agent(row: Row) -> Agent:
    config = loads(row["config"])
    return Agent(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        model=config["model"],
        system=config["system"],
        description=config["description"],
        tools=config["tools"],
        mcp_servers=config["mcp_servers"],
        skills=config["skills"],
        metadata=config["metadata"],
        version=int(row["version"]),
        created_at=ms_to_datetime(row["created_at"]),
        updated_at=ms_to_datetime(row["updated_at"]),
        archived_at=ms_to_datetime(row["archived_at"]) if row["archived_at"] is not None else None,
    )


def _version(row: Row) -> AgentVersion:
    return AgentVersion(
        agent_id=row["agent_id"],
        tenant_id=row["tenant_id"],
        version=int(row["version"]),
        snapshot=loads(row["snapshot"]),
        created_at=ms_to_datetime(row["created_at"]),
    )


@attrs.frozen
class _Next:
    """An update computed from one read: the resulting agent and the statements that write it."""

    agent: Agent
    changed: bool
    statements: list[Statement]


def _snapshot(name: str, config: dict[str, Any], version: int) -> str:
    return dumps({"name": name, **config, "version": version}, what="agent", max_depth=MAX_JSON_DEPTH + 1)


class SqlAgentStore:
    def __init__(self, client: SqlClient, tenant: TenantRef, clock: Clock | None = None) -> None:
        self._db = client
        self._tenant = tenant
        self.tenant_id = tenant.tenant_id
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"SqlAgentStore(tenant_id={self.tenant_id!r})"

    async def create(
        self,
        *,
        name: str,
        model: str | dict[str, Any],
        system: str = "",
        description: str = "",
        tools: list[dict[str, Any]] | None = None,
        mcp_servers: list[dict[str, Any]] | None = None,
        skills: list[dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Agent:
        name = validate.name(name)
        config = {
            "model": _model(model),
            "system": _check_field("system", system),
            "description": _check_field("description", description),
            "tools": validate.objects(tools, "tools"),
            "mcp_servers": validate.objects(mcp_servers, "mcp_servers"),
            "skills": validate.objects(skills, "skills"),
            "metadata": validate.metadata(metadata),
        }
        config_text = _config_text(config)
        await self._tenant.ensure()
        now = self._clock.now_ms()
        agent_id = new_id("agt", now_ms=now)
        await self._db.run_batch(
            [
                Statement(
                    "INSERT INTO agents (tenant_id, id, name, name_search, model_id, version, config,"
                    " created_at, updated_at, archived_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, NULL)",
                    (
                        self.tenant_id,
                        agent_id,
                        name,
                        validate.search_key(name),
                        _model_id(config["model"]),
                        config_text,
                        now,
                        now,
                    ),
                ),
                Statement(
                    "INSERT INTO agent_versions (tenant_id, agent_id, version, snapshot, created_at)"
                    " VALUES (?, ?, 1, ?, ?)",
                    (self.tenant_id, agent_id, _snapshot(name, config, 1), now),
                ),
            ]
        )
        created = ms_to_datetime(now)
        return Agent(
            id=agent_id,
            tenant_id=self.tenant_id,
            name=name,
            version=1,
            created_at=created,
            updated_at=created,
            **config,
        )

    async def _row(self, agent_id: str) -> Row:
        check_id(agent_id, "agt", what="agent_id")
        row = await self._db.fetch_one(
            "SELECT * FROM agents WHERE tenant_id = ? AND id = ?", (self.tenant_id, agent_id)
        )
        if row is None:
            raise NotFound(f"agent {agent_id} not found", agent_id=agent_id)
        return row

    async def get(self, agent_id: str) -> Agent:
        return _agent(await self._row(agent_id))

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        include_archived: bool = False,
        q: str | None = None,
        model: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[Agent]:
        include_archived = validate.flag(include_archived, "include_archived")
        where: list[str] = ["tenant_id = ?"]
        params: list[Any] = [self.tenant_id]
        if not include_archived:
            where.append("archived_at IS NULL")
        if q is not None:
            where.append("name_search LIKE ? ESCAPE '\\'")
            params.append(validate.like_pattern(q))
        if model is not None:
            where.append("model_id = ?")
            params.append(validate.text(model, "model", max_len=200, min_len=1))
        after, before = created_between(where, params, created_after, created_before)
        return await list_page(
            self._db,
            table="agents",
            where=where,
            params=params,
            scope=(self.tenant_id, bool(include_archived), q, model, after, before),
            cursor=cursor,
            order=order,
            limit=limit,
            to_model=_agent,
        )

    def _next_version(self, row: Row, checked: dict[str, Any], patch: Any, expected_version: int | None) -> _Next:
        """The version that applying the changes to ``row`` makes (``changed`` is False when it makes none)."""
        current = _agent(row)
        agent_id = current.id
        if current.archived_at is not None:
            raise Conflict(f"agent {agent_id} is archived and cannot be updated", agent_id=agent_id)
        if expected_version is not None and current.version != expected_version:
            raise VersionConflict(
                f"agent {agent_id} is at version {current.version}, not {expected_version}",
                expected=expected_version,
                actual=current.version,
                agent_id=agent_id,
            )
        old_config = loads(row["config"])
        config = {**old_config, **{k: v for k, v in checked.items() if k != "name"}}
        name = checked.get("name", current.name)
        if patch is not None:
            config["metadata"] = _check_field("metadata", patch, old_config)
        now = max(self._clock.now_ms(), int(row["updated_at"]))
        version = current.version + 1
        if name == current.name and config == old_config:
            return _Next(current, False, [])
        agent = Agent(
            id=agent_id,
            tenant_id=self.tenant_id,
            name=name,
            version=version,
            created_at=current.created_at,
            updated_at=ms_to_datetime(now),
            **{k: config[k] for k in _CONFIG_FIELDS},
        )
        write = Statement(
            "UPDATE agents SET name = ?, name_search = ?, model_id = ?, config = ?, version = ?,"
            " updated_at = ? WHERE tenant_id = ? AND id = ? AND version = ? AND archived_at IS NULL",
            (
                name,
                validate.search_key(name),
                _model_id(config["model"]),
                _config_text(config),
                version,
                now,
                self.tenant_id,
                agent_id,
                current.version,
            ),
            expect_rows=True,
        )
        history = Statement(
            "INSERT INTO agent_versions (tenant_id, agent_id, version, snapshot, created_at) VALUES (?, ?, ?, ?, ?)",
            (self.tenant_id, agent_id, version, _snapshot(name, config, version), now),
        )
        return _Next(agent, True, [write, history])

    async def update(self, agent_id: str, *, expected_version: int | None = None, **changes: Any) -> Agent:
        """Apply ``changes`` as the next version, atomically with its history row.

        The write is conditional on the version it was computed from (``WHERE version = ?``). With
        ``expected_version``, losing that race is a ``VersionConflict``. Without it, the update is applied
        again on top of the winner, in a transaction that takes the agent's row lock before reading it, so it
        cannot lose twice: no concurrent field change is reverted and versions stay consecutive.
        """
        check_id(agent_id, "agt", what="agent_id")
        if expected_version is not None:
            expected_version = validate.integer(expected_version, "expected_version", minimum=1)
        checked: dict[str, Any] = {}
        for field, value in changes.items():
            if field != "metadata":
                checked[field] = _check_field(field, value)  # raises on unknown fields with the valid ones
        patch = changes.get("metadata")
        if "metadata" in changes and not isinstance(patch, dict):
            raise InvalidInput("metadata must be an object", field="metadata")
        await self._tenant.ensure()
        step = self._next_version(await self._row(agent_id), checked, patch, expected_version)
        if not step.changed:
            return step.agent
        if (await self._db.run_batch(step.statements)).committed:
            return step.agent
        if expected_version is not None:
            self._next_version(await self._row(agent_id), checked, patch, expected_version)  # raises the refusal
        async with self._db.transaction() as tx:
            # A write that changes nothing takes the row's lock (on SQLite the transaction holds the write lock).
            await tx.execute(
                "UPDATE agents SET version = version WHERE tenant_id = ? AND id = ?", (self.tenant_id, agent_id)
            )
            row = await tx.fetch_one("SELECT * FROM agents WHERE tenant_id = ? AND id = ?", (self.tenant_id, agent_id))
            if row is None:
                raise NotFound(f"agent {agent_id} not found", agent_id=agent_id)
            step = self._next_version(row, checked, patch, expected_version)
            for statement in step.statements:
                await tx.execute(statement.sql, statement.params)
        return step.agent

    async def versions(
        self, agent_id: str, *, limit: int = 50, cursor: str | None = None, order: Order = "desc"
    ) -> Page[AgentVersion]:
        await self._row(agent_id)
        return await list_page(
            self._db,
            table="agent_versions",
            where=["tenant_id = ?", "agent_id = ?"],
            params=[self.tenant_id, agent_id],
            scope=(self.tenant_id, agent_id),
            cursor=cursor,
            order=order,
            limit=limit,
            to_model=_version,
            key_columns=("version", "agent_id"),
        )

    async def get_version(self, agent_id: str, version: int) -> AgentVersion:
        check_id(agent_id, "agt", what="agent_id")
        version = validate.integer(version, "version", minimum=1)
        row = await self._db.fetch_one(
            "SELECT * FROM agent_versions WHERE tenant_id = ? AND agent_id = ? AND version = ?",
            (self.tenant_id, agent_id, version),
        )
        if row is None:
            raise NotFound(f"agent {agent_id} has no version {version}", agent_id=agent_id, version=version)
        return _version(row)

    async def archive(self, agent_id: str) -> Agent:
        check_id(agent_id, "agt", what="agent_id")
        row = await archive_row(self._db, "agents", tenant_id=self.tenant_id, row_id=agent_id, now=self._clock.now_ms())
        if row is None:
            raise NotFound(f"agent {agent_id} not found", agent_id=agent_id)
        return _agent(row)

    async def delete(self, agent_id: str) -> None:
        check_id(agent_id, "agt", what="agent_id")
        result = await self._db.run_batch(
            [
                Statement(
                    "DELETE FROM agents WHERE tenant_id = ? AND id = ?", (self.tenant_id, agent_id), expect_rows=True
                ),
                Statement(
                    "DELETE FROM agent_versions WHERE tenant_id = ? AND agent_id = ?", (self.tenant_id, agent_id)
                ),
            ]
        )
        if not result.committed:
            raise NotFound(f"agent {agent_id} not found", agent_id=agent_id)
