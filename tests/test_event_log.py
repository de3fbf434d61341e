"""The sessions store and event log of the SQL family, through the same contract third parties use.

``store_backend`` is parametrized by engine (tests/fixtures/engines.py), so every test runs on SQLite and
on the suite's throwaway Postgres server.
"""

from __future__ import annotations

from openma.testing import EventLogContract

SQL_CAPABILITIES = {"transactions", "concurrent_writers", "multi_process"}


class TestEventLog(EventLogContract):
    capabilities = SQL_CAPABILITIES
