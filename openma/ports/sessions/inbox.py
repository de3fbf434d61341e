"""The ``Inbox`` port: durable, deduplicated, FIFO inputs, promoted into the log exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from openma.models import Event, InboxItem, Page


class Inbox(Protocol):
    """A session's inbox.

    ``post`` queues inputs durably, FIFO, deduplicated by event id (a re-post returns the queued item);
    archived and terminated sessions refuse it (``Conflict``). ``pending`` pages what waits, oldest first.
    ``promote`` moves pending inputs into the log exactly once (an input already promoted returns its event;
    a cancelled one is ``Conflict``); ``cancel`` cancels pending inputs (what an interrupt does).
    """

    async def post(self, session_id: str, events: Sequence[dict[str, Any]]) -> list[InboxItem]: ...

    async def pending(self, session_id: str, *, limit: int = 100, cursor: str | None = None) -> Page[InboxItem]: ...

    async def promote(self, session_id: str, event_ids: Sequence[str], *, fence: int | None = None) -> list[Event]: ...

    async def cancel(
        self, session_id: str, event_ids: Sequence[str] | None = None, *, fence: int | None = None
    ) -> list[InboxItem]: ...
