"""The runnable index and scheduled wake-ups: how workers find the sessions that have something to do.

A session is **runnable** while its inbox holds pending input. The index is durable and kept by the store
itself: ``post`` marks the session runnable in the same transaction as the inbox row, and
:meth:`SessionSchedules.clear_runnable` (called by the session's actor when a turn ends) unmarks it only if
the inbox is drained at that moment, under the session row's lock, so an input posted during the turn keeps
the session runnable. Deleting a session removes it from the index; a terminated one is dropped by the
first worker that finds it (:meth:`RunnableIndex.admin_drop_runnable`).

A **wake-up** is a stored schedule of a session (one-shot ``at``, interval ``every``, or ``cron``). A due
wake-up is fired by posting a ``user.message`` whose event id is derived from the wake-up and its due time
(so posting it twice is one input), then moving ``next_due`` forward with a conditional update
(:meth:`SessionSchedules.advance_wakeup`): whichever worker wins that update fired it, exactly once per due
time. The post is what makes the session runnable.

:class:`SessionSchedules` is bound to one tenant (part of the ``SessionStore``); :class:`RunnableIndex` is the
cross-tenant maintenance view a worker reads, so its reading methods say ``admin`` in their names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal, Protocol

import attrs

from openma.models import Value
from openma.ports.sessions.values import Wakeup

#: How a wake-up repeats: once, every N seconds, or on a cron expression.
WakeupKind = Literal["at", "every", "cron"]
WAKEUP_KINDS: Final = ("at", "every", "cron")
#: At most this many wake-ups per session (as the original platform's ``MAX_PENDING_WAKEUPS``).
MAX_WAKEUPS_PER_SESSION: Final = 20


@attrs.frozen
class Runnable(Value):
    """One entry of the runnable index: a session with something to do, and since when."""

    tenant_id: str
    session_id: str
    since: datetime


@attrs.frozen
class ScheduledWakeup(Value):
    """A stored wake-up of a session. ``next_due`` is when it fires next; ``fired`` counts its firings."""

    id: str
    tenant_id: str
    session_id: str
    kind: WakeupKind
    next_due: datetime
    every: float | None
    cron: str | None
    prompt: str
    fired: int
    last_fired_at: datetime | None
    created_at: datetime


class SessionSchedules(Protocol):
    """The tenant-bound half: a session's wake-ups, and clearing its runnable mark."""

    async def add_wakeup(
        self,
        session_id: str,
        *,
        kind: WakeupKind,
        next_due: datetime,
        every: float | None = None,
        cron: str | None = None,
        prompt: str,
    ) -> ScheduledWakeup:
        """Store a wake-up (values already checked by the caller). ``NotFound`` for an unknown session,
        ``Conflict`` for a terminated or archived one or one that has :data:`MAX_WAKEUPS_PER_SESSION`."""
        ...

    async def list_wakeups(self, session_id: str) -> list[ScheduledWakeup]:
        """The session's wake-ups, soonest first."""
        ...

    async def cancel_wakeup(self, session_id: str, wakeup_id: str) -> bool:
        """Remove a wake-up; False if it was not there (already cancelled, or a one-shot that fired)."""
        ...

    async def advance_wakeup(
        self, session_id: str, wakeup_id: str, *, due: datetime, next_due: datetime | None
    ) -> bool:
        """Claim the firing due at ``due``: move ``next_due`` to ``next_due`` (``None`` removes a one-shot),
        only if it still is ``due``. True for the one caller that won; False if another did, or it is gone."""
        ...

    async def is_runnable(self, session_id: str) -> bool:
        """True while the session is in the runnable index."""
        ...

    async def clear_runnable(self, session_id: str, *, fence: int | None = None) -> bool:
        """Unmark the session as runnable if its inbox holds no pending input (checked under the session
        row's lock, with the lease epoch ``fence`` when given: a stale holder gets ``LeaseLost``). True if the
        mark is gone (or was not there); False if input is pending and the session stays runnable."""
        ...


class RunnableIndex(Protocol):
    """The cross-tenant maintenance view of one backend's runnable index and wake-ups (for workers)."""

    async def admin_runnable(self, *, limit: int = 100) -> list[Runnable]:
        """Runnable sessions of every tenant, longest waiting first (from the index, never a scan of sessions)."""
        ...

    async def admin_drop_runnable(self, tenant_id: str, session_id: str) -> bool:
        """Drop the entry of a session that takes no more turns (terminated or deleted); False otherwise."""
        ...

    async def admin_due_wakeups(self, *, now: datetime, limit: int = 100) -> list[ScheduledWakeup]:
        """Wake-ups of every tenant due at ``now``, most overdue first."""
        ...

    async def admin_next_due(self) -> datetime | None:
        """When the soonest wake-up of any tenant falls due (``None`` without any)."""
        ...

    def arm(self) -> Wakeup:
        """The wake-up set by the next post or new schedule, in this process or (where the engine can tell)
        another; arm it before the read it guards."""
        ...

    def poll_timeout(self) -> float:
        """How long a worker may sleep before it re-reads the index on its own."""
        ...
