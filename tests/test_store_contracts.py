"""openma's own SQL store family, through the same conformance kit that third parties use.

Every test runs on each engine (``store_backend``) and on asyncio and trio (``anyio_backend``); each engine
declares its capabilities in tests/fixtures/engines.py.
"""

from __future__ import annotations

import pytest

from openma.testing import (
    AgentStoreContract,
    CredentialContract,
    EnvironmentStoreContract,
    TenantStoreContract,
    VaultContract,
)
from tests.fixtures.engines import ANYIO_BACKENDS

pytestmark = pytest.mark.usefixtures("adapter_capabilities")


@pytest.fixture(params=ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestTenants(TenantStoreContract):
    pass


class TestAgents(AgentStoreContract):
    pass


class TestEnvironments(EnvironmentStoreContract):
    pass


class TestVaults(VaultContract):
    pass


class TestCredentials(CredentialContract):
    pass
