"""Numbered, forward-only migrations per dialect, tracked with checksums in ``openma_migrations``.

* Files live in ``openma/adapters/sql/migrations/<dialect>/NNNN_name.sql``; both dialects carry the same
  names (a test checks it, and another compares the schemas they produce). Which folder a database uses is
  its engine's (:attr:`~openma.adapters.sql.engine.SqlEngine.migrations`); every function here takes it, or
  asks the engine of a built-in engine's client when it is not given.
* ``migrate`` applies every pending file in order, all in one transaction that holds the migration lock
  (the write lock on SQLite, an advisory lock on Postgres), so concurrent starters apply each file once.
* A file that was applied and has changed since is a :class:`MigrationError` naming it; so is a database
  that has a migration this version of openma does not know (it was migrated by a newer release).
* ``stamp`` records files as applied without running them, to adopt a database that already has the schema.
"""

from __future__ import annotations

import hashlib
import re
import time
from importlib.resources.abc import Traversable
from typing import Final

import attrs

from openma.adapters.sql.engine import engine_of, migrations_folder
from openma.errors import ConfigError
from openma.ports.sql import SqlClient, SqlTransaction

_NAME_RE: Final = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

TABLE_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS openma_migrations ("
    "name TEXT NOT NULL PRIMARY KEY, checksum TEXT NOT NULL, applied_at BIGINT NOT NULL)"
)


class MigrationError(ConfigError):
    """The database's migration history does not match the migration files of this release."""

    code = "migration_error"


@attrs.frozen
class Migration:
    name: str
    sql: str
    checksum: str


@attrs.frozen
class MigrationStatus:
    name: str
    applied: bool
    applied_at_ms: int | None


def load_migrations(folder: str | Traversable) -> list[Migration]:
    """The migration files of ``folder`` (a shipped dialect's name, or a folder), in order."""
    if isinstance(folder, str):
        folder = migrations_folder(folder)
    dialect = folder.name
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        if not _NAME_RE.match(entry.name):
            raise MigrationError(f"migration file {entry.name!r} does not match NNNN_name.sql")
        text = entry.read_text(encoding="utf-8").replace("\r\n", "\n")
        found.append(Migration(entry.name, text, hashlib.sha256(text.encode()).hexdigest()))
    found.sort(key=lambda m: m.name)
    numbers = [m.name[:4] for m in found]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two {dialect} migrations share a number: {numbers}")
    return found


def _shipped(client: SqlClient, folder: str | Traversable | None) -> list[Migration]:
    return load_migrations(engine_of(client).migrations if folder is None else folder)


async def _applied(tx: SqlTransaction) -> dict[str, tuple[str, int]]:
    rows = await tx.fetch_all("SELECT name, checksum, applied_at FROM openma_migrations ORDER BY name")
    return {r["name"]: (r["checksum"], int(r["applied_at"])) for r in rows}


def _verify(applied: dict[str, tuple[str, int]], shipped: list[Migration]) -> None:
    by_name = {m.name: m for m in shipped}
    for name, (checksum, _) in applied.items():
        if name not in by_name:
            raise MigrationError(
                f"the database has migration {name!r}, which this version of openma does not ship "
                "(was it migrated by a newer release?)",
                migration=name,
            )
        if by_name[name].checksum != checksum:
            raise MigrationError(
                f"migration {name!r} was changed after it was applied (checksum mismatch); "
                "migrations are forward-only: add a new file instead",
                migration=name,
            )


async def migrate(client: SqlClient, folder: str | Traversable | None = None) -> list[str]:
    """Apply the pending migrations of ``folder`` (default: the client's engine's); return the names applied."""
    shipped = _shipped(client, folder)
    async with client.migration_lock() as tx:
        await tx.execute(TABLE_DDL)
        applied = await _applied(tx)
        _verify(applied, shipped)
        done: list[str] = []
        for migration in shipped:
            if migration.name in applied:
                continue
            await tx.execute_script(migration.sql)
            await tx.execute(
                "INSERT INTO openma_migrations (name, checksum, applied_at) VALUES (?, ?, ?)",
                (migration.name, migration.checksum, int(time.time() * 1000)),
            )
            done.append(migration.name)
        return done


async def stamp(client: SqlClient, upto: str | None = None, folder: str | Traversable | None = None) -> list[str]:
    """Mark migrations as applied without running them (all, or up to and including ``upto``)."""
    shipped = _shipped(client, folder)
    if upto is not None and upto not in {m.name for m in shipped} and upto not in {m.name[:4] for m in shipped}:
        raise MigrationError(f"unknown migration {upto!r}; known: {', '.join(m.name for m in shipped)}")
    async with client.migration_lock() as tx:
        await tx.execute(TABLE_DDL)
        applied = await _applied(tx)
        _verify(applied, shipped)
        done: list[str] = []
        for migration in shipped:
            if migration.name not in applied:
                await tx.execute(
                    "INSERT INTO openma_migrations (name, checksum, applied_at) VALUES (?, ?, ?)",
                    (migration.name, migration.checksum, int(time.time() * 1000)),
                )
                done.append(migration.name)
            if upto is not None and upto in (migration.name, migration.name[:4]):
                break
        return done


async def status(client: SqlClient, folder: str | Traversable | None = None) -> list[MigrationStatus]:
    """Every shipped migration and whether (and when) it was applied."""
    shipped = _shipped(client, folder)
    async with client.migration_lock() as tx:
        await tx.execute(TABLE_DDL)
        applied = await _applied(tx)
    return [
        MigrationStatus(m.name, m.name in applied, applied[m.name][1] if m.name in applied else None) for m in shipped
    ]
