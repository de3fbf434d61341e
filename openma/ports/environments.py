"""The environments store, bound to one tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from openma.models import Environment, Order, Page

UPDATABLE_ENVIRONMENT_FIELDS = ("name", "description", "config", "metadata")


class EnvironmentStore(Protocol):
    """Environments: where a session's tools run.

    ``update`` replaces ``name``, ``description`` and ``config``, merges ``metadata`` key by key (``None``
    removes a key), and refuses archived environments with ``Conflict``.
    """

    tenant_id: str

    async def create(
        self,
        *,
        name: str,
        config: dict[str, Any] | None = None,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> Environment: ...

    async def get(self, environment_id: str) -> Environment: ...

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
    ) -> Page[Environment]: ...

    async def update(self, environment_id: str, **changes: Any) -> Environment: ...

    async def archive(self, environment_id: str) -> Environment: ...

    async def delete(self, environment_id: str) -> None: ...
