"""Sessions, their event logs, inboxes and model streams on the SQL family.

How the contract of :mod:`openma.ports.sessions` is kept, in SQL that both engines run:

* **Seq.** An append bumps ``sessions.last_seq`` by the batch size and inserts the batch with
  ``INSERT … SELECT s.last_seq - n + k … FROM sessions s, (VALUES …)``, in one write unit. The bump locks
  the session row until commit (Postgres row lock; SQLite's single writer), so concurrent appenders queue
  and seqs stay gapless. On Postgres the bump, the fence check, the insert and the ``pg_notify`` are one
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
"""

from __future__ import annotations

from openma.adapters.sql.sessions.inbox import InboxMixin
from openma.adapters.sql.sessions.lease import LeaseMixin
from openma.adapters.sql.sessions.log import EventLogMixin
from openma.adapters.sql.sessions.rows import SessionRowsMixin
from openma.adapters.sql.sessions.sandbox import SandboxRecordMixin

__all__ = ["SqlSessionStore"]


class SqlSessionStore(SessionRowsMixin, EventLogMixin, InboxMixin, LeaseMixin, SandboxRecordMixin):
    """The :class:`~openma.ports.sessions.SessionStore` of one tenant over a :class:`~openma.ports.sql.SqlClient`."""
