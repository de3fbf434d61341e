"""The contract of the sessions store and its event log (:mod:`openma.ports.sessions`).

Combine ``EventLogContract`` with the ``store_backend`` fixture of the store contracts (a fresh, migrated
backend per test); the contract asks it for ``backend.sessions(tenant, blobs=..., settings=...)``. Spilled
events go to a ``file://`` blob store in the test's temporary directory unless you override the
``event_blobs`` fixture (a function from tenant id to that tenant's *internal* blob view, which accepts the
keys of openma's area ``.openma/...``, as ``FsspecBlobStore.for_tenant(tenant_id, internal=True)`` does)::

    import pytest
    from openma.testing import EventLogContract

    class TestMyEventLog(EventLogContract):
        capabilities = {"transactions", "concurrent_writers"}

        @pytest.fixture
        async def store_backend(self):
            backend = await open_my_backend()
            await backend.migrate()
            yield backend
            await backend.aclose()

``concurrent_writers`` turns on the races: 50 appenders on one session, two appenders of one id, two
promoters of one input. Waits are bounded (``anyio.fail_after``) so a broken wake-up fails instead of
hanging; nothing asserts how fast anything is.
"""

from __future__ import annotations

import pytest

from openma.testing._events_base import LogEnv
from openma.testing._events_follow import FollowChecks
from openma.testing._events_rows import SessionRowsChecks
from openma.testing._events_writes import LogWriteChecks

__all__ = ["EventLogContract", "LogEnv"]


@pytest.mark.anyio
class EventLogContract(SessionRowsChecks, LogWriteChecks, FollowChecks):
    """Sessions, their event log, spill, inbox, streams, live tail and retention.

    The checks live in three parts (rows and reads; fencing, spill, inbox and status; streams, live tail
    and retention) over one base of fixtures; this class is all of them.
    """
