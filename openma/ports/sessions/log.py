"""The ``EventLog`` port: fenced, deduplicated appends with gapless seqs, paged reads and ``read_after``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from openma.models import Event, Order, Page


class EventLog(Protocol):
    """A session's event log.

    ``append`` writes a batch in one transaction; each event gets the next ``seq`` of its session (gapless,
    strictly increasing). An event whose ``id`` is already logged is not written again: the stored event is
    returned in its place. ``events`` reads pages both ways with a scoped cursor; ``read_after`` is the
    primitive the core's live tail is built on. A read below what retention kept is ``ResyncRequired``.
    """

    async def append(
        self, session_id: str, events: Sequence[dict[str, Any]], *, fence: int | None = None
    ) -> list[Event]: ...

    async def events(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        limit: int = 100,
        types: Sequence[str] | None = None,
        cursor: str | None = None,
        order: Order = "asc",
    ) -> Page[Event]: ...

    async def get_event(self, session_id: str, event_id: str) -> Event: ...

    async def read_after(self, session_id: str, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with ``seq > after``, in seq order (``[]``: none yet). ``NotFound`` for a
        missing session; ``ResyncRequired`` when retention removed events right after ``after``."""
        ...
