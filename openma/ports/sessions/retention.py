"""The ``Retention`` port: prune a session's oldest events, finalized streams, and the tenant-wide ``gc``."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from openma.models import GcReport


class Retention(Protocol):
    """What removes old data.

    ``prune`` removes a session's oldest events (``before_seq``, ``older_than`` or ``keep_last``), their
    spilled blobs, and promoted inbox rows whose events are gone, in batches of ``batch_size``; it only ever
    removes a prefix, so the retained log stays gapless from ``Session.first_seq``. ``prune_streams`` removes
    finalized streams. ``gc`` does the same for every session of the tenant by age, removes finalized
    streams and settled inbox rows older than the cutoff, and finishes interrupted deletes.
    """

    async def prune(
        self,
        session_id: str,
        *,
        before_seq: int | None = None,
        older_than: datetime | None = None,
        keep_last: int | None = None,
        batch_size: int = 1000,
    ) -> int: ...

    async def prune_streams(
        self, session_id: str, *, older_than: datetime | None = None, fence: int | None = None
    ) -> int: ...

    async def gc(self, cutoff: datetime, *, batch_size: int = 1000, dry_run: bool = False) -> GcReport:
        """With ``dry_run``, remove nothing and report what a pass would remove now."""
        ...
