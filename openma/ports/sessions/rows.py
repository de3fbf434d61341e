"""The ``SessionRows`` port: a session's row (create, read, list, update, archive, delete, status)."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from openma.models import Event, Order, Page, Session
from openma.ports.sessions.values import UNSET


class SessionRows(Protocol):
    """Session rows of one tenant.

    ``create`` stores frozen snapshots of the agent and the environment; ``list`` is keyset paginated (by
    agent, environment, status); ``update`` changes ``title`` and merges ``metadata`` (a ``None`` value
    removes a key); ``archive`` keeps everything readable but refuses new ``post`` calls; ``delete`` removes
    the session with its events, inbox, streams and spilled blobs, in bounded batches (a crash half-way is
    finished by the next ``gc``); a deleted session is ``NotFound`` at once.
    """

    tenant_id: str

    async def create(
        self,
        *,
        agent_id: str,
        environment_id: str,
        agent_snapshot: dict[str, Any],
        environment_snapshot: dict[str, Any],
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        vault_ids: Sequence[str] = (),
    ) -> Session: ...

    async def get(self, session_id: str) -> Session: ...

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        agent_id: str | None = None,
        environment_id: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[Session]: ...

    async def update(
        self, session_id: str, *, title: str | None = UNSET, metadata: dict[str, Any] | None = None
    ) -> Session: ...

    async def archive(self, session_id: str) -> Session: ...

    async def delete(self, session_id: str) -> None: ...

    async def set_status(
        self,
        session_id: str,
        status: str,
        *,
        from_statuses: Iterable[str] | None = None,
        events: Sequence[dict[str, Any]] = (),
        fence: int | None = None,
    ) -> tuple[Session, builtins.list[Event]]:
        """Move to ``status`` only from ``from_statuses`` (default: the lifecycle's sources for it), appending
        ``events`` in the same transaction. A session not in ``from_statuses`` is ``Conflict`` (unless it is
        already in ``status`` and every event is already logged: a retried transition is a no-op)."""
        ...
