"""openma's own SQL store family, through the same conformance kit that third parties use."""

from __future__ import annotations

from openma.testing import AgentStoreContract, EnvironmentStoreContract, TenantStoreContract

SQL_CAPABILITIES = {"transactions", "concurrent_writers", "unicode_casefold_search", "multi_process"}


class TestTenants(TenantStoreContract):
    capabilities = SQL_CAPABILITIES


class TestAgents(AgentStoreContract):
    capabilities = SQL_CAPABILITIES


class TestEnvironments(EnvironmentStoreContract):
    capabilities = SQL_CAPABILITIES
