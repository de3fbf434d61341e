"""The value objects of the public API: frozen ``attrs`` classes, safe to share and to cache.

Timestamps are timezone-aware UTC ``datetime`` values; JSON payloads stay plain ``dict``/``list`` values.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import attrs

T = TypeVar("T")

Order = Literal["asc", "desc"]


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


@attrs.frozen
class Session:
    """One conversation of an agent in an environment, with its event log.

    ``agent`` and ``environment`` are snapshots frozen at creation: later edits of the agent or environment
    do not change a running session. ``last_seq`` is the seq of the newest event (0 for an empty log) and
    ``first_seq`` the oldest seq retention kept (1 until something is pruned).
    """

    id: str
    tenant_id: str
    agent_id: str
    environment_id: str
    title: str | None
    metadata: dict[str, Any]
    status: str
    agent: dict[str, Any]
    environment: dict[str, Any]
    last_seq: int
    first_seq: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None


@attrs.frozen
class Event:
    """One entry of a session's log. ``data`` is the whole JSON payload (with its ``id`` and ``type``)."""

    id: str
    type: str
    seq: int
    created_at: datetime
    data: dict[str, Any]


@attrs.frozen
class InboxItem:
    """An input posted to a session, waiting for (or done with) promotion into its log.

    ``state`` is ``pending``, ``promoted`` (``seq`` is then its place in the log) or ``cancelled``;
    ``position`` orders the inbox first in, first out.
    """

    event_id: str
    type: str
    position: int
    state: str
    data: dict[str, Any]
    seq: int | None
    created_at: datetime
    updated_at: datetime


@attrs.frozen
class Stream:
    """One model call's streamed output: ``open`` until finalized ``completed``, ``aborted`` or ``interrupted``.

    ``text`` is every chunk appended so far, joined; ``chunks`` counts them.
    """

    id: str
    session_id: str
    kind: str
    status: str
    message_id: str | None
    text: str
    chunks: int
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None


@attrs.frozen
class GcReport:
    """What one ``gc`` pass removed."""

    events: int = 0
    inbox: int = 0
    streams: int = 0
    sessions: int = 0
    blobs: int = 0
    #: Blobs of the tenant whose TTL had run out (snapshots, TTL'd tenant blobs), swept in the same pass.
    expired_blobs: int = 0
