"""Sessions, their event logs, inboxes and model streams on the SQL family.

How the contract of :mod:`openma.ports.sessions` is kept, in SQL that both engines run:

* **Seq.** An append bumps ``sessions.last_seq`` by the batch size and inserts the batch with
  ``INSERT … SELECT s.last_seq - n + k … FROM sessions s, (VALUES …)``, in one write unit. The bump locks
  the session row until commit (Postgres row lock; SQLite's single writer), so concurrent appenders queue
  and seqs stay gapless. On Postgres the bump, the fence check, the insert and the notification are one
  statement (a data-modifying ``WITH``): one round trip per append.
* **Fence.** With ``fence``, the statement that locks the session row also checks ``lease_epoch = fence``
  and the unit aborts (``expect_rows``) when it does not match: nothing of the unit is written. A lease
  holder that bumps the epoch waits on that same row lock, so a write either commits before the new epoch
  or is refused after it.
* **Dedup.** A retry is the normal case, so it raises nothing in the database (a failed statement would
  abort a pipelined unit): the statement that locks the session row refuses a batch holding an id already
  logged, and the ids found are left out of the next attempt; an inbox post inserts only the ids not in the
  inbox yet and moves its counter by what it inserted; a promotion refuses an input whose id is logged and
  settles it to that event; re-opening a stream is ``ON CONFLICT DO NOTHING``. Two appenders racing one id
  past the lock can still collide: the unique violation rolls the unit back and the stored event is
  returned.
* **Spill.** Blobs are written before the unit and removed again when the unit is refused; their keys
  name the content (see :mod:`openma.core.events`), so a retry or a duplicate never overwrites a stored
  event's blob with other bytes.
* **Deletes and retention** run in bounded batches. A session is first marked ``deleted_at`` (it is
  ``NotFound`` from then on), then emptied batch by batch, then its row goes; ``gc`` finishes any delete
  that a crash interrupted.

**Parts.** :class:`SqlSessionStore` composes one part per port (:mod:`.rows`, :mod:`.log`, :mod:`.inbox`,
:mod:`.streams`, :mod:`.retention`, :mod:`.lease`, :mod:`.wake`, :mod:`.schedules`) over one shared
:class:`~openma.adapters.sql.sessions.context.SessionContext`; its methods are the parts' own bound methods.
What differs between engines is asked of the engine (:class:`~openma.adapters.sql.engine.SqlEngine`).
"""

from __future__ import annotations

import attrs

from openma.adapters.sql.sessions.context import SessionContext
from openma.adapters.sql.sessions.inbox import SqlInbox
from openma.adapters.sql.sessions.lease import SqlSessionLease
from openma.adapters.sql.sessions.log import SqlEventLog
from openma.adapters.sql.sessions.retention import SqlRetention
from openma.adapters.sql.sessions.rows import SqlSessionRows
from openma.adapters.sql.sessions.schedules import SqlSchedules
from openma.adapters.sql.sessions.streams import SqlStreams
from openma.adapters.sql.sessions.wake import SqlWakeups
from openma.adapters.sql.wakeups import SessionWakeups
from openma.core import events as ev
from openma.core import tail
from openma.core.clock import Clock
from openma.models import InboxItem, Page
from openma.ports.blobs import BlobStore
from openma.ports.sql import SqlClient
from openma.ports.telemetry import Telemetry
from openma.ports.tenancy import TenantRef

__all__ = ["SessionContext", "SessionParts", "SqlSessionStore"]


@attrs.frozen
class SessionParts:
    """The parts of one store, one per port, all on the same :class:`SessionContext`."""

    rows: SqlSessionRows
    log: SqlEventLog
    inbox: SqlInbox
    streams: SqlStreams
    retention: SqlRetention
    lease: SqlSessionLease
    wakeups: SqlWakeups
    schedules: SqlSchedules


class SqlSessionStore:
    """The :class:`~openma.ports.sessions.SessionStore` of one tenant over a :class:`~openma.ports.sql.SqlClient`.

    Built from its :class:`SessionParts` (``store.parts``) on one :class:`SessionContext` (``store.context``);
    every port method is the bound method of the part that implements it, so a call costs no extra hop.
    """

    def __init__(
        self,
        client: SqlClient,
        tenant: TenantRef,
        clock: Clock | None = None,
        *,
        wakeups: SessionWakeups | None = None,
        blobs: BlobStore | None = None,
        spill_bytes: int = 500_000,
        max_event_bytes: int = ev.MAX_EVENT_BYTES,
        telemetry: Telemetry | None = None,
    ) -> None:
        ctx = SessionContext(
            client,
            tenant,
            clock,
            wakeups=wakeups,
            blobs=blobs,
            spill_bytes=spill_bytes,
            max_event_bytes=max_event_bytes,
            telemetry=telemetry,
        )
        self.context = ctx
        self.tenant_id = ctx.tenant_id
        log = SqlEventLog(ctx)
        streams = SqlStreams(ctx)
        retention = SqlRetention(ctx, streams)
        rows = SqlSessionRows(ctx, log, retention)
        inbox = SqlInbox(ctx)
        lease = SqlSessionLease(ctx)
        wakeups_part = SqlWakeups(ctx)
        schedules = SqlSchedules(ctx)
        self.parts = SessionParts(rows, log, inbox, streams, retention, lease, wakeups_part, schedules)
        # SessionRows
        self.create = rows.create
        self.get = rows.get
        self.list = rows.list
        self.update = rows.update
        self.archive = rows.archive
        self.delete = rows.delete
        self.set_status = rows.set_status
        # EventLog
        self.append = log.append
        self.events = log.events
        self.get_event = log.get_event
        self.read_after = log.read_after
        # Inbox
        self.post = inbox.post
        self.pending = inbox.pending
        self.promote = inbox.promote
        self.cancel = inbox.cancel
        # Streams
        self.open_stream = streams.open_stream
        self.append_stream = streams.append_stream
        self.finalize_stream = streams.finalize_stream
        self.get_stream = streams.get_stream
        self.streams = streams.streams
        # Retention
        self.prune = retention.prune
        self.prune_streams = retention.prune_streams
        self.gc = retention.gc
        # SessionLease
        self.take_lease = lease.take_lease
        self.drop_lease = lease.drop_lease
        self.sandbox_record = lease.sandbox_record
        self.record_sandbox = lease.record_sandbox
        # SessionWakeups
        self.arm = wakeups_part.arm
        self.poll_timeout = wakeups_part.poll_timeout
        # SessionSchedules
        self.add_wakeup = schedules.add_wakeup
        self.list_wakeups = schedules.list_wakeups
        self.cancel_wakeup = schedules.cancel_wakeup
        self.advance_wakeup = schedules.advance_wakeup
        self.is_runnable = schedules.is_runnable
        self.clear_runnable = schedules.clear_runnable

    def __repr__(self) -> str:
        return f"SqlSessionStore(tenant_id={self.tenant_id!r})"

    @property
    def telemetry(self) -> Telemetry:
        """Where failures this store recovers from are reported (``silent_catch``)."""
        return self.context.telemetry

    @telemetry.setter
    def telemetry(self, sink: Telemetry) -> None:
        self.context.telemetry = sink

    def subscribe(self, session_id: str, *, after: int = 0) -> tail.EventTail:
        """The core's live tail over this store (:func:`openma.core.tail.subscribe`)."""
        return tail.subscribe(self, session_id, after=after)

    async def wait_pending(self, session_id: str, *, timeout: float, limit: int = 100) -> Page[InboxItem]:
        """The core's inbox wait over this store (:func:`openma.core.tail.wait_pending`)."""
        return await tail.wait_pending(self, session_id, timeout=timeout, limit=limit)
