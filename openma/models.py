"""The value objects of the public API: frozen ``attrs`` classes, safe to share and to cache.

Timestamps are timezone-aware UTC ``datetime`` values; JSON payloads stay plain ``dict``/``list`` values.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs

T = TypeVar("T")


@attrs.frozen
class Page(Generic[T]):
    """One page of a list. ``next_cursor`` is ``None`` on the last page; pass it back as ``cursor=``."""

    items: list[T]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        more = f", next_cursor={self.next_cursor!r}" if self.next_cursor else ""
        return f"Page({len(self.items)} items{more})"


@attrs.frozen
class Tenant:
    """A customer of the host platform; every other row belongs to exactly one tenant."""

    id: str
    name: str
    metadata: dict[str, Any]
    created_at: datetime
    archived_at: datetime | None = None


@attrs.frozen
class Agent:
    """An agent definition. ``version`` starts at 1 and grows by one on every effective update."""

    id: str
    tenant_id: str
    name: str
    model: str | dict[str, Any]
    system: str
    description: str
    tools: list[dict[str, Any]]
    mcp_servers: list[dict[str, Any]]
    skills: list[dict[str, Any]]
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None

    @property
    def model_id(self) -> str:
        """The model's id whether ``model`` is a plain string or ``{"id": ..., ...}``."""
        return self.model if isinstance(self.model, str) else str(self.model.get("id", ""))


@attrs.frozen
class AgentVersion:
    """An immutable snapshot of an agent at one version (the current one included)."""

    agent_id: str
    tenant_id: str
    version: int
    snapshot: dict[str, Any]
    created_at: datetime


@attrs.frozen
class Environment:
    """Where a session's tools run: sandbox provider settings, packages, network policy, ..."""

    id: str
    tenant_id: str
    name: str
    description: str
    config: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None
