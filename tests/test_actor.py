"""openma's SessionActor on both engines, on asyncio and trio, through the same contract third parties use."""

from __future__ import annotations

import pytest

from openma.testing.actor import ActorContract
from tests.fixtures.engines import ANYIO_BACKENDS

pytestmark = pytest.mark.usefixtures("adapter_capabilities")


@pytest.fixture(params=ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestActor(ActorContract):
    pass
