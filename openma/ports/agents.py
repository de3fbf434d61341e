"""The agents store, bound to one tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from openma.models import Agent, AgentVersion, Order, Page

#: Fields that ``update`` accepts.
UPDATABLE_AGENT_FIELDS = ("name", "model", "system", "description", "tools", "mcp_servers", "skills", "metadata")


class AgentStore(Protocol):
    """Agents and their version history.

    * ``create`` stores version 1 and its history row in one transaction.
    * ``update`` applies ``changes`` (only :data:`UPDATABLE_AGENT_FIELDS`; ``metadata`` is merged key by key
      and a ``None`` value removes a key). If ``expected_version`` is given, the UPDATE itself checks it and
      a stale value raises ``VersionConflict`` with nothing written. An update that changes nothing returns
      the agent unchanged (no new version). Each effective update bumps ``version`` by one and writes the
      new version's history row in the same transaction. Archived agents refuse updates (``Conflict``).
    * ``versions`` lists every version, newest first by default; ``get_version`` reads one.
    * ``delete`` removes the agent and its whole history.
    """

    tenant_id: str

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
    ) -> Agent: ...

    async def get(self, agent_id: str) -> Agent: ...

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
    ) -> Page[Agent]: ...

    async def update(self, agent_id: str, *, expected_version: int | None = None, **changes: Any) -> Agent: ...

    async def versions(
        self, agent_id: str, *, limit: int = 50, cursor: str | None = None, order: Order = "desc"
    ) -> Page[AgentVersion]: ...

    async def get_version(self, agent_id: str, version: int) -> AgentVersion: ...

    async def archive(self, agent_id: str) -> Agent: ...

    async def delete(self, agent_id: str) -> None: ...
