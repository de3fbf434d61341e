"""``SandboxContract`` against the real E2B and Daytona services.

Run only when ``E2B_API_KEY`` / ``DAYTONA_API_KEY`` are set (they create real sandboxes, which cost money
and count against concurrency limits: run them nightly or on demand, never per commit)::

    E2B_API_KEY=... DAYTONA_API_KEY=... python -m pytest -m live tests/test_sandbox_live.py

Leak protection: every sandbox is labelled with this run's id and lives at most five minutes (E2B
``timeout=300``; Daytona stops after five idle minutes and is deleted when it stops); each test destroys its
sandbox in ``finally``, and the module ends by sweeping whatever this run left behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from openma.adapters.sandboxes import daytona, e2b
from openma.core.sweeper import sweep_sandboxes
from openma.ports.sandbox import Sandbox, SandboxSpec
from openma.settings import Settings
from openma.testing.sandbox import SandboxContract

pytestmark = pytest.mark.live

if not (os.environ.get("E2B_API_KEY") or os.environ.get("DAYTONA_API_KEY")):
    pytest.skip(
        "live sandbox tests: set E2B_API_KEY and/or DAYTONA_API_KEY to run them (they create real sandboxes)",
        allow_module_level=True,
    )

RUN = secrets.token_hex(4)
LIFETIME = 300.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def _provider(name: str) -> AsyncIterator[Any]:
    from openma import registry

    provider = await registry.sandboxes.load(name)(Settings.from_env(), blobs=await _blobs())
    try:
        yield provider
    finally:
        try:
            await sweep_sandboxes(provider, older_than=0, labels={"openma-live-run": RUN})
        finally:
            await provider.aclose()


async def _blobs() -> Any:
    from openma.adapters.fsspec_blobs import FsspecBlobStore

    return await FsspecBlobStore.open(f"memory://live-{RUN}")


def _spec() -> SandboxSpec:
    return SandboxSpec(
        tenant_id="ten_live",
        session_id=f"ses_live_{secrets.token_hex(4)}",
        labels={"openma-live-run": RUN},
        lifetime=LIFETIME,
    )


@pytest.fixture(scope="module")
async def live_e2b() -> AsyncIterator[Any]:
    async for provider in _provider("e2b"):
        yield provider


@pytest.fixture(scope="module")
async def live_daytona() -> AsyncIterator[Any]:
    async for provider in _provider("daytona"):
        yield provider


@pytest.mark.skipif(
    not os.environ.get("E2B_API_KEY"), reason="live E2B test: set E2B_API_KEY to run it (creates real sandboxes)"
)
class TestE2BLive(SandboxContract):
    capabilities = e2b.CAPABILITIES
    stop_deadline = 30.0

    @pytest.fixture
    async def sandbox(self, live_e2b: Any) -> AsyncIterator[Sandbox]:
        sandbox = await live_e2b.create(_spec())
        try:
            yield sandbox
        finally:
            await sandbox.destroy()


@pytest.mark.skipif(
    not os.environ.get("DAYTONA_API_KEY"),
    reason="live Daytona test: set DAYTONA_API_KEY to run it (creates real sandboxes)",
)
class TestDaytonaLive(SandboxContract):
    capabilities = daytona.CAPABILITIES
    stop_deadline = 30.0

    @pytest.fixture
    async def sandbox(self, live_daytona: Any) -> AsyncIterator[Sandbox]:
        sandbox = await live_daytona.create(_spec())
        try:
            yield sandbox
        finally:
            await sandbox.destroy()
