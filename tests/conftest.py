"""Shared fixtures. Engine fixtures live in tests/fixtures/ and are loaded as plugins."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from openma.testing import capabilities

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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Fold the conformance kit's "does not declare" skips into one ``-ra`` line per reason."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and "does not declare" in str(longrepr[2]):
        report.longrepr = (capabilities.__file__, 1, longrepr[2])
    return report
