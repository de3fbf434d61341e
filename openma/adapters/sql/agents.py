"""Agents and their version history on the SQL family.

The optimistic-concurrency check lives in the UPDATE itself (``WHERE version = ?``), and the new version's
history row is written in the same write unit, guarded by that UPDATE: if the UPDATE matched nothing, the
unit rolls back and nothing is written. An update without ``expected_version`` that lost that race is
recomputed and written under the agent's row lock, so it applies on top of the winner instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs

from openma.adapters.sql.entity import Filter, TenantBoundStore, optional_text
from openma.adapters.sql.listing import list_page
from openma.core import validate
from openma.core.clock import ms_to_datetime
from openma.core.ids import check_id
from openma.core.jsonutil import MAX_JSON_DEPTH, dumps, loads
from openma.errors import InvalidInput, NotFound, VersionConflict
from openma.models import Agent, AgentVersion, Order, Page
from openma.ports.sql import Row, Statement

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


#: The check of each updatable field but ``metadata`` (a patch merged key by key).
_FIELDS: Final[dict[str, Callable[[Any], Any]]] = {
    "name": validate.name,
    "model": _model,
    "system": optional_text("system", max_len=MAX_SYSTEM),
    "description": optional_text("description", max_len=MAX_DESCRIPTION),
    "tools": lambda value: validate.objects(value, "tools"),
    "mcp_servers": lambda value: validate.objects(value, "mcp_servers"),
    "skills": lambda value: validate.objects(value, "skills"),
}


def _config_text(config: dict[str, Any]) -> str:
    text = dumps(config, what="agent", max_depth=MAX_JSON_DEPTH + 1)  # the checked fields, one level down
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"agent definition is too large (> {MAX_CONFIG_BYTES} bytes)")
    return text


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


class SqlAgentStore(TenantBoundStore[Agent]):
    """Agents of one tenant, each with its version history (``agent_versions``)."""

    table = "agents"
    prefix = "agt"
    noun = "agent"
    fields = _FIELDS
    filters = {"model": Filter("model_id", lambda value: validate.text(value, "model", max_len=200, min_len=1))}
    dependents = {"agent_versions": "agent_id"}

    def from_row(self, row: Row) -> Agent:
        config = loads(row["config"])
        return Agent(**self._common(row), **{k: config[k] for k in _CONFIG_FIELDS}, version=int(row["version"]))

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
            "system": _FIELDS["system"](system),
            "description": _FIELDS["description"](description),
            "tools": validate.objects(tools, "tools"),
            "mcp_servers": validate.objects(mcp_servers, "mcp_servers"),
            "skills": validate.objects(skills, "skills"),
            "metadata": validate.metadata(metadata),
        }
        values = {"name": name, "model_id": _model_id(config["model"]), "version": 1, "config": _config_text(config)}
        agent_id, now = await self._create(
            values, also=lambda new_id, now: [self._history(new_id, 1, _snapshot(name, config, 1), now)]
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

    def _history(self, agent_id: str, version: int, snapshot: str, now: int) -> Statement:
        return Statement(
            "INSERT INTO agent_versions (tenant_id, agent_id, version, snapshot, created_at) VALUES (?, ?, ?, ?, ?)",
            (self.tenant_id, agent_id, version, snapshot, now),
        )

    def _next_version(self, row: Row, checked: dict[str, Any], patch: Any, expected_version: int | None) -> _Next:
        """The version that applying the changes to ``row`` makes (``changed`` is False when it makes none)."""
        current = self.from_row(row)
        agent_id = current.id
        if current.archived_at is not None:
            raise self._archived(agent_id)
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
            config["metadata"] = validate.merge_metadata(old_config.get("metadata", {}), patch)
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
        return _Next(agent, True, [write, self._history(agent_id, version, _snapshot(name, config, version), now)])

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
        checked, patch = self._changes(changes)
        await self._ensure_owner()
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
            step = self._next_version(await self._row(agent_id, tx), checked, patch, expected_version)
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
