"""Shared fixtures. Engine fixtures live in tests/fixtures/ and are loaded as plugins."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.engines",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.sandbox_fakes",
]


@pytest.fixture
def anyio_backend() -> str:
    """Tests run on asyncio; modules that also run on trio override this fixture."""
    return "asyncio"
