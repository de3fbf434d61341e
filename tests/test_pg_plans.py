"""Postgres: statements are prepared after a few runs, batches never (so each batch is planned for its values)."""

from __future__ import annotations

import pytest

from openma import Settings
from openma.adapters.postgres import PostgresClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_small_statements_are_prepared_and_batches_are_not(pg_url: str) -> None:
    client = await PostgresClient.open(pg_url, Settings(postgres_url=pg_url, pg_pool_min_size=1, pg_pool_max_size=1))
    try:
        small = "SELECT ?::int + 1 AS n"
        batch = f"SELECT count(*) AS n FROM (VALUES {', '.join(['(?::int)'] * 40)}) AS v"
        for _ in range(8):
            assert (await client.fetch_one(small, (1,))) == {"n": 2}
            assert (await client.fetch_one(batch, tuple(range(40)))) == {"n": 40}
        rows = await client.fetch_all("SELECT statement FROM pg_prepared_statements")
        texts = [r["statement"] for r in rows]
        assert any("+ 1 AS n" in t for t in texts), texts
        assert not any("VALUES" in t for t in texts), texts
    finally:
        await client.aclose()
