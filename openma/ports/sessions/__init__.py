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
item). ``pending`` pages what waits, oldest first; ``promote`` moves pending inputs into the log exactly once
(promoting an input that is already promoted returns its event; a cancelled one is ``Conflict``); ``cancel``
cancels pending inputs (what an interrupt does). Archived and terminated sessions refuse ``post``
(``Conflict``).

**Streams.** One row per model call: ``open_stream``, ``append_stream`` (one write per batch of chunks),
``finalize_stream`` as ``completed``, ``aborted`` or ``interrupted`` (idempotent for the same status),
``streams`` pages them (``open`` ones for crash recovery, with their text), ``prune_streams`` removes finalized
ones.

**Live tail.** The core builds ``subscribe`` and ``wait_pending`` once (:mod:`openma.core.tail`) over
``read_after``, ``pending`` and the wake-up port: a store provides the primitives, not the loop.

**Retention.** ``prune`` removes a session's oldest events (``before_seq``, ``older_than`` or ``keep_last``),
their spilled blobs, and promoted inbox rows whose events are gone, in batches of ``batch_size``; it only
ever removes a prefix, so the retained log stays gapless from ``Session.first_seq``. ``gc`` does the same
for every session of the tenant by age, removes finalized streams and settled inbox rows older than the
cutoff, and finishes interrupted deletes.

**Ports.** The store is the composition of small ports, one module each; an adapter implements them all
(one class, or parts behind one object):

====================  ================================================================================
port                  methods
====================  ================================================================================
``SessionRows``       ``create``, ``get``, ``list``, ``update``, ``archive``, ``delete``, ``set_status``
``EventLog``          ``append``, ``events``, ``get_event``, ``read_after``
``Inbox``             ``post``, ``pending``, ``promote``, ``cancel``
``Streams``           ``open_stream``, ``append_stream``, ``finalize_stream``, ``get_stream``, ``streams``
``Retention``         ``prune``, ``prune_streams``, ``gc``
``SessionLease``      ``take_lease``, ``drop_lease``, ``sandbox_record``, ``record_sandbox``
``SessionWakeups``    ``arm``, ``poll_timeout``
``SessionSchedules``  ``add_wakeup``, ``list_wakeups``, ``cancel_wakeup``, ``advance_wakeup``,
                      ``is_runnable``, ``clear_runnable``
====================  ================================================================================
"""

from __future__ import annotations

from typing import Protocol

from openma.ports.sessions.inbox import Inbox
from openma.ports.sessions.lease import SessionLease
from openma.ports.sessions.log import EventLog
from openma.ports.sessions.retention import Retention
from openma.ports.sessions.rows import SessionRows
from openma.ports.sessions.runnable import RunnableIndex, SessionSchedules
from openma.ports.sessions.streams import Streams
from openma.ports.sessions.values import (
    FINAL_STREAM_STATUSES,
    INBOX_STATES,
    STREAM_STATUSES,
    UNSET,
    EventFeed,
    LeaseGrant,
    SandboxRecord,
    StopSignal,
    Unset,
    WakeKind,
    Wakeup,
)
from openma.ports.sessions.wakeups import SessionWakeups

__all__ = [
    "FINAL_STREAM_STATUSES",
    "INBOX_STATES",
    "STREAM_STATUSES",
    "UNSET",
    "EventFeed",
    "EventLog",
    "Inbox",
    "LeaseGrant",
    "Retention",
    "SandboxRecord",
    "SessionLease",
    "RunnableIndex",
    "SessionRows",
    "SessionSchedules",
    "SessionStore",
    "SessionWakeups",
    "StopSignal",
    "Streams",
    "Unset",
    "WakeKind",
    "Wakeup",
]


class SessionStore(
    SessionRows, EventLog, Inbox, Streams, Retention, SessionLease, SessionWakeups, SessionSchedules, Protocol
):
    """Sessions, their event logs, inboxes and streams, bound to one tenant: every port above, on one object
    (so the actor fences all its writes in one store). The contract is this module's docstring."""
