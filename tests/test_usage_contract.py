"""The SQL usage ledger through the conformance kit, on every engine of the ``store_backend`` fixture, on
asyncio and on trio (where the engine declares it)."""

from __future__ import annotations

import pytest

from openma.testing import UsageContract
from tests.fixtures.engines import ANYIO_BACKENDS

pytestmark = pytest.mark.usefixtures("adapter_capabilities")


@pytest.fixture(params=ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestSqlUsage(UsageContract):
    pass
