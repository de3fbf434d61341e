"""The Postgres engine on a real server: dialect, settings, write units, transactions, errors, driver loading."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from openma import Platform, Settings
from openma.adapters.postgres import (
    PostgresClient,
    PostgresDialect,
    translate,
)
from openma.adapters.postgres_engine import open_store_backend
from openma.errors import ConfigError, StorageUnavailable
from openma.ports.sql import Statement
from openma.testing.pgserver import PgServer
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio

TENANT_INSERT = "INSERT INTO tenants (id, name, metadata, created_at, archived_at) VALUES (?, ?, '{}', ?, NULL)"


async def open_client(url: str, **settings: Any) -> PostgresClient:
    return await PostgresClient.open(url, Settings(postgres_url=url, **settings))


@pytest.fixture
async def client(pg_url: str) -> AsyncIterator[PostgresClient]:
    c = await open_client(pg_url)
    try:
        yield c
    finally:
        await c.aclose()


async def tenant_ids(client: PostgresClient) -> list[str]:
    return [r["id"] for r in await client.fetch_all("SELECT id FROM tenants ORDER BY id")]


# -- dialect (no server)


@pytest.mark.parametrize(
    ("portable", "translated"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("name LIKE ? ESCAPE '\\'", "name LIKE %s ESCAPE '\\'"),
        ("SELECT '?', \"we?rd\", ? -- why?\n", "SELECT '?', \"we?rd\", %s -- why?\n"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
        ("SELECT E'\\'?', ?", "SELECT E'\\'?', %s"),
        ("SELECT $$ ? $$, $q$ ?' $q$, ?", "SELECT $$ ? $$, $q$ ?' $q$, %s"),
        ("/* ? */ ?", "/* ? */ %s"),
        ("SELECT '100%', 7 % ?", "SELECT '100%%', 7 %% %s"),
    ],
)
def test_placeholders_are_translated_outside_literals_and_comments(portable: str, translated: str) -> None:
    assert PostgresDialect().sql(portable) == translated


def test_translation_is_cached() -> None:
    text = "SELECT ? AS cached_probe"
    translate(text)
    hits = translate.cache_info().hits
    translate(text)
    assert translate.cache_info().hits == hits + 1


def test_unique_violation_is_read_from_the_sqlstate() -> None:
    class Fake(Exception):
        sqlstate = "23505"

    class NotNull(Exception):
        sqlstate = "23502"

    dialect = PostgresDialect()
    assert dialect.is_unique_violation(Fake())
    assert not dialect.is_unique_violation(NotNull())
    assert not dialect.is_unique_violation(ValueError("duplicate key"))


# -- driver loading and event loops (no server)


def test_the_module_imports_without_the_driver() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "import openma.adapters.postgres as pg\n"
        "print(pg.PostgresDialect().sql('?'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "%s"


async def test_missing_driver_is_a_config_error_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)
    url = "postgresql://nobody@127.0.0.1:9/nothing"
    with pytest.raises(ConfigError, match=r"pip install 'openma\[pg\]'"):
        await open_store_backend(Settings(postgres_url=url))
    settings = Settings(
        sqlite_path=str(tmp_path / "o.db"), postgres_url=url, store_backends={"default": "cf", "agents": "pg"}
    )
    with pytest.raises(ConfigError, match=r"pip install 'openma\[pg\]'"):
        async with Platform.open(settings):
            pass


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="asyncio only"):
        await PostgresClient.open("postgresql://nobody@127.0.0.1:9/nothing")


async def test_a_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid connection URL"):
        await PostgresClient.open("postgresql://x@127.0.0.1:5432/db?nonsense_option=1")


async def test_nothing_listening_is_storage_unavailable_at_once() -> None:
    from openma.testing.pgserver import free_port

    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="cannot connect"):
        await PostgresClient.open(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert time.monotonic() - started < 5


# -- settings on a real server


@pytest.mark.postgres
async def test_settings_reach_the_server(pg_url: str) -> None:
    c = await open_client(pg_url, pg_application_name="openma-test-app", pg_statement_timeout_ms=1234)
    try:
        row = await c.fetch_one(
            "SELECT current_setting('application_name') AS app, current_setting('statement_timeout') AS st"
        )
        assert row == {"app": "openma-test-app", "st": "1234ms"}
    finally:
        await c.aclose()
    # What the URL says wins over the settings' defaults.
    c = await open_client(pg_url + "?application_name=from-url")
    try:
        row = await c.fetch_one("SELECT current_setting('application_name') AS app")
        assert row == {"app": "from-url"}
    finally:
        await c.aclose()


@pytest.mark.postgres
@pytest.mark.parametrize("prepared", [True, False])
async def test_prepared_statements_switch(pg_url: str, prepared: bool) -> None:
    c = await open_client(pg_url, pg_prepared_statements=prepared, pg_pool_min_size=1, pg_pool_max_size=1)
    try:
        for _ in range(8):
            await c.fetch_one("SELECT count(*) AS n FROM tenants WHERE id = ?", ("tnt_x",))
        row = await c.fetch_one("SELECT count(*) AS n FROM pg_prepared_statements")
        assert row is not None
        assert (row["n"] > 0) is prepared
    finally:
        await c.aclose()


@pytest.mark.postgres
async def test_statement_timeout_is_storage_unavailable_and_the_pool_survives(pg_url: str) -> None:
    c = await open_client(pg_url, pg_statement_timeout_ms=200)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="timed out") as info:
            await c.fetch_one("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 3
        assert info.value.details["sqlstate"] == "57014"
        assert await c.fetch_one("SELECT 1 AS one") == {"one": 1}
    finally:
        await c.aclose()


@pytest.mark.postgres
async def test_percent_and_question_marks_round_trip(client: PostgresClient) -> None:
    row = await client.fetch_one("SELECT '100%' AS a, ? AS b, 'x?' AS c, 7 % 4 AS d", ("p%?",))
    assert row == {"a": "100%", "b": "p%?", "c": "x?", "d": 3}


@pytest.mark.postgres
async def test_unique_violation_is_recognized_on_a_real_error(client: PostgresClient) -> None:
    await client.execute(TENANT_INSERT, ("tnt_a", "a", 1))
    with pytest.raises(Exception) as info:
        await client.execute(TENANT_INSERT, ("tnt_a", "again", 2))
    assert client.dialect.is_unique_violation(info.value)
    assert not isinstance(info.value, StorageUnavailable)


# -- write units


@pytest.mark.postgres
async def test_batch_commits_and_returns_rows(client: PostgresClient) -> None:
    result = await client.run_batch(
        [
            Statement(TENANT_INSERT + " RETURNING id, name", ("tnt_a", "a", 1), fetch=True),
            Statement(TENANT_INSERT, ("tnt_b", "b", 2)),
            Statement("UPDATE tenants SET name = ? WHERE id IN (?, ?)", ("z", "tnt_a", "tnt_b")),
            Statement("SELECT id FROM tenants ORDER BY id", fetch=True),
        ]
    )
    assert result.committed
    assert result.rowcounts == [1, 1, 2, 2]
    assert result.rows[0] == [{"id": "tnt_a", "name": "a"}]
    assert result.rows[3] == [{"id": "tnt_a"}, {"id": "tnt_b"}]
    assert await tenant_ids(client) == ["tnt_a", "tnt_b"]


@pytest.mark.postgres
async def test_a_failing_statement_rolls_the_whole_unit_back(client: PostgresClient) -> None:
    await client.execute(TENANT_INSERT, ("tnt_a", "a", 1))
    with pytest.raises(Exception) as info:
        await client.run_batch(
            [
                Statement(TENANT_INSERT, ("tnt_b", "b", 2)),
                Statement(TENANT_INSERT, ("tnt_c", "c", 3)),
                Statement(TENANT_INSERT, ("tnt_a", "dup", 4)),
                Statement(TENANT_INSERT, ("tnt_d", "d", 5)),
            ]
        )
    assert client.dialect.is_unique_violation(info.value)
    assert await tenant_ids(client) == ["tnt_a"]
    # The connection went back to the pool clean: the next units work.
    await client.run_batch([Statement(TENANT_INSERT, ("tnt_e", "e", 6)), Statement(TENANT_INSERT, ("tnt_f", "f", 7))])
    assert await tenant_ids(client) == ["tnt_a", "tnt_e", "tnt_f"]


@pytest.mark.postgres
@pytest.mark.parametrize("position", ["middle", "last"])
async def test_expect_rows_aborts_and_rolls_back(client: PostgresClient, position: str) -> None:
    missing = Statement("UPDATE tenants SET name = 'x' WHERE id = ?", ("tnt_nope",), expect_rows=True)
    statements = [Statement(TENANT_INSERT, ("tnt_a", "a", 1)), missing]
    if position == "middle":
        statements.append(Statement(TENANT_INSERT, ("tnt_b", "b", 2)))
    result = await client.run_batch(statements)
    assert result.aborted_at == 1
    assert not result.committed
    assert await tenant_ids(client) == []


@pytest.mark.postgres
async def test_passing_checks_commit_everything(client: PostgresClient) -> None:
    await client.execute(TENANT_INSERT, ("tnt_a", "a", 1))
    result = await client.run_batch(
        [
            Statement(
                "UPDATE tenants SET name = 'b' WHERE id = ? RETURNING name", ("tnt_a",), fetch=True, expect_rows=True
            ),
            Statement(TENANT_INSERT, ("tnt_b", "b", 2)),
            Statement("UPDATE tenants SET name = 'c' WHERE id = ?", ("tnt_b",), expect_rows=True),
        ]
    )
    assert result.committed
    assert result.rowcounts == [1, 1, 1]
    assert result.rows[0] == [{"name": "b"}]
    assert await client.fetch_all("SELECT id, name FROM tenants ORDER BY id") == [
        {"id": "tnt_a", "name": "b"},
        {"id": "tnt_b", "name": "c"},
    ]


@pytest.mark.postgres
async def test_single_checked_statement_with_a_writing_cte_is_rolled_back(client: PostgresClient) -> None:
    sql = "WITH made AS (" + TENANT_INSERT + " RETURNING id) SELECT id FROM made WHERE id = 'no such id'"
    result = await client.run_batch([Statement(sql, ("tnt_a", "a", 1), fetch=True, expect_rows=True)])
    assert result.aborted_at == 0
    assert await tenant_ids(client) == []


# -- transactions


@pytest.mark.postgres
async def test_transaction_commits_or_rolls_back(client: PostgresClient) -> None:
    async with client.transaction() as tx:
        await tx.execute(TENANT_INSERT, ("tnt_a", "a", 1))
        assert await tx.executemany(TENANT_INSERT, [("tnt_b", "b", 2), ("tnt_c", "c", 3)]) == 2
        assert await tx.fetch_one("SELECT count(*) AS n FROM tenants") == {"n": 3}
    with pytest.raises(RuntimeError, match="boom"):
        async with client.transaction() as tx:
            await tx.execute(TENANT_INSERT, ("tnt_d", "d", 4))
            raise RuntimeError("boom")
    assert await tenant_ids(client) == ["tnt_a", "tnt_b", "tnt_c"]
    assert await client.executemany(TENANT_INSERT, [("tnt_e", "e", 5), ("tnt_f", "f", 6)]) == 2


@pytest.mark.postgres
async def test_read_transaction_is_a_read_only_snapshot(client: PostgresClient) -> None:
    await client.execute(TENANT_INSERT, ("tnt_a", "a", 1))
    async with client.transaction(write=False) as tx:
        assert await tx.fetch_all("SELECT id FROM tenants") == [{"id": "tnt_a"}]
        await client.execute(TENANT_INSERT, ("tnt_b", "b", 2))  # another connection commits meanwhile
        assert await tx.fetch_all("SELECT id FROM tenants") == [{"id": "tnt_a"}]
    with pytest.raises(Exception, match="read-only"):
        async with client.transaction(write=False) as tx:
            await tx.execute(TENANT_INSERT, ("tnt_c", "c", 3))
    assert await tenant_ids(client) == ["tnt_a", "tnt_b"]


@pytest.mark.postgres
async def test_platform_opens_on_postgres_alone(pg_empty_url: str, tmp_path: Any) -> None:
    settings = Settings(
        sqlite_path=str(tmp_path / "unused.db"),
        postgres_url=pg_empty_url,
        store_backends={"default": "pg"},
        root_secret=ROOT_SECRET,
    )
    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="acme")
        agent = await oma.tenant(tenant.id).agents.create(name="coder", model="m")
        assert (await oma.tenant(tenant.id).agents.get(agent.id)).name == "coder"
    assert not (tmp_path / "unused.db").exists()


@pytest.mark.postgres
async def test_server_admin_helpers_see_the_same_database(
    pg_server: PgServer, client: PostgresClient, pg_url: str
) -> None:
    await client.execute(TENANT_INSERT, ("tnt_a", "a", 1))
    dbname = pg_url.rsplit("/", 1)[1]
    assert pg_server.execute("SELECT id FROM tenants", dbname=dbname) == [("tnt_a",)]
