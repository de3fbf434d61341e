"""Postgres connections plan prepared statements for their parameters, so the dedup check stays an index lookup."""

from __future__ import annotations

from typing import Any

import pytest

from openma import Settings
from openma.adapters.postgres import PostgresClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _mode(url: str, **settings: Any) -> str:
    client = await PostgresClient.open(url, Settings(postgres_url=url, **settings))
    try:
        row = await client.fetch_one("SELECT current_setting('plan_cache_mode') AS mode")
        assert row is not None
        return str(row["mode"])
    finally:
        await client.aclose()


async def test_prepared_statements_get_custom_plans(pg_url: str) -> None:
    assert await _mode(pg_url) == "force_custom_plan"


async def test_a_plan_cache_mode_in_the_url_is_kept(pg_url: str) -> None:
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}options=-c%20plan_cache_mode%3Dforce_generic_plan"
    assert await _mode(url) == "force_generic_plan"


async def test_without_prepared_statements_the_server_default_stays(pg_url: str) -> None:
    assert await _mode(pg_url, pg_prepared_statements=False) == "auto"
