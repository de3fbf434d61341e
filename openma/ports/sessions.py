"""The sessions store: session rows, their event log, inbox and model streams, bound to one tenant.

A session's row, events, inbox, streams and lease live in one store, so every write of the session's actor
is fenced in one transaction. The contract (checked by :class:`openma.testing.EventLogContract`):

**Sessions.** ``create`` stores frozen snapshots of the agent and the environment; ``list`` is keyset
paginated (by agent, environment, status); ``update`` changes ``title`` and merges ``metadata`` (a ``None``
value removes a key); ``archive`` keeps everything readable but refuses new ``post`` calls; ``delete`` removes
the session with its events, inbox, streams and spilled blobs, in bounded batches (a crash half-way is
finished by the next ``gc``); a deleted session is ``NotFound`` at once.

**Event log.** ``append`` writes a batch in one transaction. Each event gets the next ``seq`` of its session
(gapless, strictly increasing, minted in the same transaction from the session's counter row, never
``MAX(seq)+1``). An event whose ``id`` is already in the log is not written again: the stored event is
returned in its place, so a retried append is a no-op, inside a batch mixed with new ids too, and when two
appenders race the same id. Events above the spill threshold (UTF-8 bytes of their JSON) go to the blob
store first and the row holds a stub; every read path returns the full event, checked against the stub's
sha256 (a missing or altered blob is ``SpillIntegrityError`` naming the event). If the blob write fails,
nothing is appended. ``events`` reads pages both ways (``after``, ``before``, ``order``, ``types``) with a
scoped cursor; a read that needs events retention removed is ``ResyncRequired``.

**Fencing.** Every write that a session's actor makes (``append``, ``set_status``, ``promote``, ``cancel``,
stream writes) takes ``fence``: the lease epoch the caller holds. When given, the epoch is checked in the
same transaction as the write; a stale epoch raises ``LeaseLost`` and writes nothing at all. Without it the
write is unfenced (``post``, admin and maintenance paths).

**Inbox.** ``post`` queues inputs durably, FIFO, deduplicated by event id (a re-post returns the queued
item). ``pending`` lists what waits, oldest first; ``promote`` moves pending inputs into the log exactly once
(promoting an input that is already promoted returns its event; a cancelled one is ``Conflict``); ``cancel``
cancels pending inputs (what an interrupt does). Archived and terminated sessions refuse ``post``
(``Conflict``).

**Streams.** One row per model call: ``open_stream``, ``append_stream`` (one write per batch of chunks),
``finalize_stream`` as ``completed``, ``aborted`` or ``interrupted`` (idempotent for the same status),
``streams`` lists them (``open`` ones for crash recovery, with their text), ``prune_streams`` removes finalized
ones.

**Live tail.** ``subscribe(session_id, after=seq)`` yields every event with ``seq > after`` in order, with no
gap and no duplicate even while appends race the catch-up, then follows new ones; see
:mod:`openma.core.tail`.

**Retention.** ``prune`` removes a session's oldest events (``before_seq``, ``older_than`` or ``keep_last``),
their spilled blobs, and promoted inbox rows whose events are gone, in batches of ``batch_size``; it only
ever removes a prefix, so the retained log stays gapless from ``Session.first_seq``. ``gc`` does the same
for every session of the tenant by age, removes finalized streams and settled inbox rows older than the
cutoff, and finishes interrupted deletes.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import attrs

from openma.core.pagination import Order
from openma.core.tail import EventTail
from openma.models import Event, GcReport, InboxItem, Page, Session, Stream

#: States of an inbox row.
INBOX_STATES: Final = ("pending", "promoted", "cancelled")
#: States of a model stream; every state but ``open`` is final.
STREAM_STATUSES: Final = ("open", "completed", "aborted", "interrupted")
FINAL_STREAM_STATUSES: Final = ("completed", "aborted", "interrupted")


@attrs.frozen
class LeaseGrant:
    """What taking a session's lease found and did."""

    #: The new epoch: every write of this holder passes it as ``fence``.
    epoch: int
    #: Who held the lease before and did not release it cleanly (``None`` after a clean release).
    previous_holder: str | None
    #: The session's status when the lease was taken.
    status: str


@attrs.frozen
class SandboxRecord:
    """What a session row remembers of its sandbox (see :meth:`SessionStore.record_sandbox`)."""

    #: The session's current lease epoch (a holder whose fence differs has lost the lease).
    lease_epoch: int
    #: The provider's id of the sandbox serving the session, if one is recorded.
    sandbox_id: str | None
    #: The latest workspace snapshot ref, as JSON (``key``, ``size``, ``sha256``, ``created_at``, ...).
    snapshot: dict[str, Any] | None


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "Leave this field as it is" (``None`` would clear it).
UNSET: Final[Any] = _Unset()


class SessionStore(Protocol):
    """Sessions, their event logs, inboxes and streams (see the module docstring for the contract)."""

    tenant_id: str

    # -- sessions

    async def create(
        self,
        *,
        agent_id: str,
        environment_id: str,
        agent_snapshot: dict[str, Any],
        environment_snapshot: dict[str, Any],
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
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

    # -- event log

    async def append(
        self, session_id: str, events: Sequence[dict[str, Any]], *, fence: int | None = None
    ) -> builtins.list[Event]: ...

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

    def subscribe(self, session_id: str, *, after: int = 0) -> EventTail: ...

    # -- inbox

    async def post(self, session_id: str, events: Sequence[dict[str, Any]]) -> builtins.list[InboxItem]: ...

    async def pending(self, session_id: str, *, limit: int = 100) -> builtins.list[InboxItem]: ...

    async def wait_pending(self, session_id: str, *, timeout: float, limit: int = 100) -> builtins.list[InboxItem]:
        """``pending``, but wait up to ``timeout`` seconds for something to be posted when nothing waits."""
        ...

    async def promote(
        self, session_id: str, event_ids: Sequence[str], *, fence: int | None = None
    ) -> builtins.list[Event]: ...

    async def cancel(
        self, session_id: str, event_ids: Sequence[str] | None = None, *, fence: int | None = None
    ) -> builtins.list[InboxItem]: ...

    # -- model streams

    async def open_stream(
        self,
        session_id: str,
        *,
        stream_id: str | None = None,
        message_id: str | None = None,
        kind: str = "message",
        fence: int | None = None,
    ) -> Stream: ...

    async def append_stream(
        self, session_id: str, stream_id: str, chunks: Sequence[str], *, fence: int | None = None
    ) -> int:
        """Append a batch of chunks in one write; return the stream's chunk count."""
        ...

    async def finalize_stream(
        self, session_id: str, stream_id: str, status: str, *, error: str | None = None, fence: int | None = None
    ) -> Stream: ...

    async def get_stream(self, session_id: str, stream_id: str) -> Stream: ...

    async def streams(
        self, session_id: str, *, status: str | None = "open", limit: int = 100
    ) -> builtins.list[Stream]: ...

    async def prune_streams(
        self, session_id: str, *, older_than: datetime | None = None, fence: int | None = None
    ) -> int: ...

    # -- retention

    async def prune(
        self,
        session_id: str,
        *,
        before_seq: int | None = None,
        older_than: datetime | None = None,
        keep_last: int | None = None,
        batch_size: int = 1000,
    ) -> int: ...

    async def gc(self, cutoff: datetime, *, batch_size: int = 1000, dry_run: bool = False) -> GcReport:
        """With ``dry_run``, remove nothing and report what a pass would remove now."""
        ...

    # -- lease (used by the session's actor, under its lease lock)

    async def take_lease(self, session_id: str, holder: str) -> LeaseGrant:
        """Bump the session's lease epoch and record ``holder``, in one transaction."""
        ...

    async def drop_lease(self, session_id: str, epoch: int) -> bool:
        """Clear the holder if ``epoch`` is still current (a clean release); ``False`` if it was not."""
        ...

    # -- the session's sandbox (written by its lease holder)

    async def sandbox_record(self, session_id: str) -> SandboxRecord:
        """The lease epoch, recorded sandbox id and latest snapshot of the session (one read)."""
        ...

    async def record_sandbox(
        self,
        session_id: str,
        *,
        sandbox_id: str | _Unset | None = UNSET,
        snapshot: dict[str, Any] | _Unset | None = UNSET,
        fence: int | None = None,
    ) -> SandboxRecord:
        """Set what is given (``None`` clears it), the epoch checked in the same transaction (``LeaseLost``
        and nothing written when ``fence`` is stale); return the record as it was before."""
        ...
