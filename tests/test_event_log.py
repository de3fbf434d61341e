"""The sessions store and event log of the SQL family, through the same contract third parties use.

``store_backend`` is parametrized by engine (tests/fixtures/engines.py), so every test runs on SQLite and
on the suite's throwaway Postgres server, each on asyncio and on trio (where the engine declares it).
"""

from __future__ import annotations

import pytest

from openma.testing import EventLogContract
from tests.fixtures.engines import ANYIO_BACKENDS

pytestmark = pytest.mark.usefixtures("adapter_capabilities")


@pytest.fixture(params=ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestEventLog(EventLogContract):
    pass
