"""Migrations on SQLite: apply once, detect tampering, stamp, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openma.adapters.sql import migrate as migrations
from openma.adapters.sql.migrate import MigrationError, load_migrations
from openma.adapters.sqlite import SqliteClient, split_script

pytestmark = pytest.mark.anyio


async def test_apply_once_then_nothing(tmp_path: Path) -> None:
    client = await SqliteClient.open(str(tmp_path / "db.sqlite"))
    try:
        first = await migrations.migrate(client)
        assert first == [m.name for m in load_migrations("sqlite")]
        assert await migrations.migrate(client) == []
        rows = await client.fetch_all("SELECT name, checksum, applied_at FROM openma_migrations ORDER BY name")
        assert [r["name"] for r in rows] == first
        assert all(len(r["checksum"]) == 64 and r["applied_at"] > 0 for r in rows)
        tables = {r["name"] for r in await client.fetch_all("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"tenants", "agents", "agent_versions", "environments", "openma_migrations"} <= tables
    finally:
        await client.aclose()


async def test_changed_applied_file_is_an_error_naming_it(tmp_path: Path) -> None:
    client = await SqliteClient.open(str(tmp_path / "db.sqlite"))
    try:
        await migrations.migrate(client)
        await client.execute("UPDATE openma_migrations SET checksum = 'tampered' WHERE name = '0001_core.sql'")
        with pytest.raises(MigrationError) as info:
            await migrations.migrate(client)
        assert "0001_core.sql" in str(info.value) and info.value.code == "migration_error"
    finally:
        await client.aclose()


async def test_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    client = await SqliteClient.open(str(tmp_path / "db.sqlite"))
    try:
        await migrations.migrate(client)
        await client.execute(
            "INSERT INTO openma_migrations (name, checksum, applied_at) VALUES ('9999_future.sql', 'x', 1)"
        )
        with pytest.raises(MigrationError, match="9999_future.sql"):
            await migrations.migrate(client)
    finally:
        await client.aclose()


async def test_stamp_adopts_an_existing_schema(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    client = await SqliteClient.open(str(path))
    try:
        # A database that already has the schema but no history (created by hand or another tool).
        async with client.transaction() as tx:
            await tx.execute_script(load_migrations("sqlite")[0].sql)
        with pytest.raises(Exception, match="already exists"):
            await migrations.migrate(client)
        stamped = await migrations.stamp(client, "0001")
        assert stamped == ["0001_core.sql"]
        assert await migrations.stamp(client, "0001") == []
        status = await migrations.status(client)
        assert status[0].applied and status[0].name == "0001_core.sql"
        with pytest.raises(MigrationError, match="unknown migration"):
            await migrations.stamp(client, "0404")
    finally:
        await client.aclose()


async def test_failed_migration_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = migrations.load_migrations

    def broken(dialect: str) -> list[migrations.Migration]:
        good = real(dialect)
        bad = migrations.Migration("0002_broken.sql", "CREATE TABLE half (x INTEGER);\nNOT SQL AT ALL;", "c")
        return [*good, bad]

    monkeypatch.setattr(migrations, "load_migrations", broken)
    client = await SqliteClient.open(str(tmp_path / "db.sqlite"))
    try:
        with pytest.raises(Exception, match="syntax error"):
            await migrations.migrate(client)
        tables = {r["name"] for r in await client.fetch_all("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "half" not in tables and "agents" not in tables  # all or nothing
    finally:
        await client.aclose()


def test_both_dialects_ship_the_same_migration_names() -> None:
    sqlite = [m.name for m in load_migrations("sqlite")]
    postgres = [m.name for m in load_migrations("postgres")]
    if postgres:  # the Postgres folder is filled by the Postgres engine
        assert sqlite == postgres


def test_split_script_keeps_semicolons_in_literals() -> None:
    script = "-- comment; here\nCREATE TABLE t (x TEXT DEFAULT ';');\n\nINSERT INTO t VALUES ('a;b');\n-- trailing\n"
    assert split_script(script) == [
        "-- comment; here\nCREATE TABLE t (x TEXT DEFAULT ';');",
        "INSERT INTO t VALUES ('a;b');",
    ]


def test_cli_migrate_status_and_stamp(tmp_path: Path) -> None:
    env = {**os.environ, "OPENMA_SQLITE_PATH": str(tmp_path / "cli.db")}

    def run(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "openma", "migrate", *args], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout

    assert "0001_core.sql pending" in run("--status")
    assert "applied 0001_core.sql" in run()
    assert "nothing (up to date)" in run()
    assert "0001_core.sql applied" in run("--status")
    assert "nothing (already recorded)" in run("--stamp")
