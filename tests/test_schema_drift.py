"""The two dialects' migrations must produce the same schema, so they cannot drift apart.

Both are migrated for real, then introspected (SQLite with ``sqlite_utils``, Postgres through
``information_schema`` and ``pg_indexes``) into one normalized shape: tables; columns with a normalized type,
nullability and whether they have a default; the primary key; unique column sets; named indexes. Any difference
fails the test, with a line per difference. A second test injects differences to prove the comparer sees them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlite_utils

from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.migrate import load_migrations
from openma.adapters.sqlite import SqliteClient
from openma.testing.pgserver import PgServer


@attrs.frozen
class Column:
    type: str
    not_null: bool
    has_default: bool


@attrs.frozen
class Index:
    table: str
    columns: tuple[str, ...]
    unique: bool
    partial: bool


@attrs.define
class Table:
    columns: dict[str, Column] = attrs.Factory(dict)
    primary_key: tuple[str, ...] = ()
    uniques: set[tuple[str, ...]] = attrs.Factory(set)


@attrs.define
class Schema:
    tables: dict[str, Table] = attrs.Factory(dict)
    indexes: dict[str, Index] = attrs.Factory(dict)


def sqlite_type(declared: str) -> str:
    """SQLite's type-affinity rules, with the names the Postgres side normalizes to."""
    d = declared.upper()
    if "INT" in d:
        return "int64"
    if any(word in d for word in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if not d or "BLOB" in d:
        return "blob"
    if any(word in d for word in ("REAL", "FLOA", "DOUB")):
        return "float64"
    return f"numeric({d.lower()})"


PG_TYPES = {
    "bigint": "int64",
    "integer": "int32",
    "smallint": "int16",
    "text": "text",
    "bytea": "blob",
    "double precision": "float64",
    "real": "float32",
    "boolean": "bool",
    "json": "json",
    "jsonb": "json",
}


def pg_type(data_type: str) -> str:
    return PG_TYPES.get(data_type, data_type)


def sqlite_schema(path: Path) -> Schema:
    db = sqlite_utils.Database(path)
    schema = Schema()
    try:
        for name in db.table_names():
            if name.startswith("sqlite_"):
                continue
            t = db[name]
            assert isinstance(t, sqlite_utils.db.Table)
            without_rowid = "WITHOUT ROWID" in (t.schema or "").upper()
            table = Table(primary_key=tuple(t.pks) if any(c.is_pk for c in t.columns) else ())
            for c in t.columns:
                not_null = bool(c.notnull) or (bool(c.is_pk) and without_rowid)
                table.columns[c.name] = Column(sqlite_type(c.type), not_null, c.default_value is not None)
            for index in t.indexes:
                columns = tuple(index.columns)
                if index.unique and index.origin != "pk":
                    table.uniques.add(columns)
                if index.origin == "c":  # created with CREATE INDEX (not backing a constraint)
                    schema.indexes[index.name] = Index(name, columns, bool(index.unique), bool(index.partial))
            schema.tables[name] = table
    finally:
        db.close()
    return schema


_INDEXDEF = re.compile(r"^CREATE (UNIQUE )?INDEX \S+ ON \S+ USING \w+ \((?P<cols>.*?)\)(?P<where> WHERE .*)?$")


def postgres_schema(server: PgServer, dbname: str) -> Schema:
    def q(sql: str) -> list[Any]:
        return server.execute(sql, dbname=dbname)

    schema = Schema()
    for (name,) in q(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    ):
        schema.tables[name] = Table()
    for table, column, data_type, nullable, default in q(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = 'public'"
    ):
        if table in schema.tables:
            schema.tables[table].columns[column] = Column(pg_type(data_type), nullable == "NO", default is not None)
    constraint_indexes: set[str] = set()
    for table, constraint, kind, columns in q(
        "SELECT tc.table_name, tc.constraint_name, tc.constraint_type,"
        " array_agg(kcu.column_name::text ORDER BY kcu.ordinal_position)"
        " FROM information_schema.table_constraints tc JOIN information_schema.key_column_usage kcu"
        " ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema"
        " AND kcu.table_name = tc.table_name"
        " WHERE tc.table_schema = 'public' AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
        " GROUP BY tc.table_name, tc.constraint_name, tc.constraint_type"
    ):
        constraint_indexes.add(constraint)
        if kind == "PRIMARY KEY":
            schema.tables[table].primary_key = tuple(columns)
        else:
            schema.tables[table].uniques.add(tuple(columns))
    for table, name, indexdef in q("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"):
        match = _INDEXDEF.match(indexdef)
        assert match is not None, f"cannot read index definition {indexdef!r}"
        columns = tuple(c.strip().strip('"') for c in match["cols"].split(","))
        unique = match.group(1) is not None
        if name in constraint_indexes:
            continue
        if unique:
            schema.tables[table].uniques.add(columns)
        schema.indexes[name] = Index(table, columns, unique, match["where"] is not None)
    return schema


def compare(left: Schema, right: Schema, names: tuple[str, str] = ("sqlite", "postgres")) -> list[str]:
    """Every difference between two schemas, one readable line each (empty when they match)."""
    a, b = names
    out: list[str] = []
    for name in sorted(left.tables.keys() - right.tables.keys()):
        out.append(f"table {name} exists only on {a}")
    for name in sorted(right.tables.keys() - left.tables.keys()):
        out.append(f"table {name} exists only on {b}")
    for name in sorted(left.tables.keys() & right.tables.keys()):
        lt, rt = left.tables[name], right.tables[name]
        for col in sorted(lt.columns.keys() - rt.columns.keys()):
            out.append(f"column {name}.{col} exists only on {a}")
        for col in sorted(rt.columns.keys() - lt.columns.keys()):
            out.append(f"column {name}.{col} exists only on {b}")
        for col in sorted(lt.columns.keys() & rt.columns.keys()):
            if lt.columns[col] != rt.columns[col]:
                out.append(f"column {name}.{col} differs: {a} {lt.columns[col]} vs {b} {rt.columns[col]}")
        if lt.primary_key != rt.primary_key:
            out.append(f"primary key of {name} differs: {a} {lt.primary_key} vs {b} {rt.primary_key}")
        if lt.uniques != rt.uniques:
            out.append(f"unique constraints of {name} differ: {a} {sorted(lt.uniques)} vs {b} {sorted(rt.uniques)}")
    for name in sorted(left.indexes.keys() - right.indexes.keys()):
        out.append(f"index {name} exists only on {a}")
    for name in sorted(right.indexes.keys() - left.indexes.keys()):
        out.append(f"index {name} exists only on {b}")
    for name in sorted(left.indexes.keys() & right.indexes.keys()):
        if left.indexes[name] != right.indexes[name]:
            out.append(f"index {name} differs: {a} {left.indexes[name]} vs {b} {right.indexes[name]}")
    return out


async def migrated_sqlite(path: Path) -> None:
    backend = SqlStoreBackend("cf", await SqliteClient.open(str(path), readers=1))
    try:
        await backend.migrate()
    finally:
        await backend.aclose()


def test_both_dialects_ship_the_same_migration_files() -> None:
    sqlite = [m.name for m in load_migrations("sqlite")]
    postgres = [m.name for m in load_migrations("postgres")]
    assert sqlite, "no migrations found"
    assert sqlite == postgres


@pytest.mark.postgres
@pytest.mark.anyio
async def test_sqlite_and_postgres_schemas_match(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    await migrated_sqlite(tmp_path / "drift.db")
    left = sqlite_schema(tmp_path / "drift.db")
    right = postgres_schema(pg_server, pg_url.rsplit("/", 1)[1])
    assert "agents" in left.tables
    assert compare(left, right) == []


@pytest.mark.postgres
def test_postgres_id_columns_sort_bytewise(pg_server: PgServer, pg_url: str) -> None:
    """Keyset pagination breaks ties on ``id``: on Postgres it must use the "C" collation, as SQLite compares."""
    rows = pg_server.execute(
        "SELECT table_name, collation_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name = 'id' AND data_type = 'text'",
        dbname=pg_url.rsplit("/", 1)[1],
    )
    assert rows, "no id columns found"
    assert {table: collation for table, collation in rows if collation != "C"} == {}


@pytest.mark.postgres
@pytest.mark.anyio
async def test_the_comparer_catches_injected_differences(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    path = tmp_path / "drift.db"
    await migrated_sqlite(path)
    dbname = pg_url.rsplit("/", 1)[1]
    db = sqlite_utils.Database(path)
    db.execute("ALTER TABLE agents ADD COLUMN only_here TEXT")
    db.execute("CREATE UNIQUE INDEX agents_name_uq ON agents (tenant_id, name)")
    db.close()
    pg_server.execute(
        "ALTER TABLE environments ALTER COLUMN description DROP NOT NULL;"
        "ALTER TABLE tenants ALTER COLUMN created_at TYPE integer;"
        "CREATE INDEX tenants_name_idx ON tenants (name);"
        "CREATE TABLE pg_only (x text PRIMARY KEY);"
        "ALTER TABLE agent_versions DROP CONSTRAINT agent_versions_pkey;"
        "ALTER TABLE agent_versions ADD PRIMARY KEY (tenant_id, version, agent_id)",
        dbname=dbname,
    )
    diff = compare(sqlite_schema(path), postgres_schema(pg_server, dbname))
    text = "\n".join(diff)
    for expected in [
        "column agents.only_here exists only on sqlite",
        "index agents_name_uq exists only on sqlite",
        "unique constraints of agents differ",
        "column environments.description differs",
        "column tenants.created_at differs",
        "index tenants_name_idx exists only on postgres",
        "table pg_only exists only on postgres",
        "primary key of agent_versions differs",
    ]:
        assert expected in text, f"{expected!r} not reported in:\n{text}"
    assert len(diff) == 8, text
