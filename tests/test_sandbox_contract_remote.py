"""``SandboxContract`` on the E2B and Daytona adapters, through their real SDKs and the local fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from openma.adapters.sandboxes import daytona, e2b
from openma.ports.sandbox import Sandbox, SandboxSpec
from openma.testing.sandbox import SandboxContract


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # both SDKs are asyncio-native


class TestE2BSandboxContract(SandboxContract):
    capabilities = e2b.CAPABILITIES
    output_limit = 1 << 20

    @pytest.fixture
    async def sandbox(self, e2b_provider: Any, remote_spec: Callable[..., SandboxSpec]) -> AsyncIterator[Sandbox]:
        sandbox = await e2b_provider.create(remote_spec())
        try:
            yield sandbox
        finally:
            await sandbox.destroy()


class TestDaytonaSandboxContract(SandboxContract):
    capabilities = daytona.CAPABILITIES
    output_limit = 1 << 20

    @pytest.fixture
    async def sandbox(self, daytona_provider: Any, remote_spec: Callable[..., SandboxSpec]) -> AsyncIterator[Sandbox]:
        sandbox = await daytona_provider.create(remote_spec())
        try:
            yield sandbox
        finally:
            await sandbox.destroy()
