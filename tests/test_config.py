"""The per-part configurations (openma.config) and how Settings composes them, keeping every flat name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from openma import ConfigError, Settings
from openma.config import (
    PARTS,
    BlobConfig,
    DaytonaConfig,
    E2BConfig,
    LocalSandboxConfig,
    PostgresConfig,
    SQLiteConfig,
    render_docs,
)
from openma.settings import _ENV, _FLAT, SETTINGS_FIELDS, _Flat

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
PG = "postgresql://u:hunter2@db:5432/app"


def test_settings_compose_the_parts_and_keep_the_flat_names() -> None:
    s = Settings(sqlite_path="x.db", postgres_url=PG, pg_pool_max_size=3, blob_url="memory://b", daytona_cpu=2)
    assert s.sqlite == SQLiteConfig(path="x.db") and s.sqlite.path == s.sqlite_path == "x.db"
    assert s.postgres.url == s.postgres_url == PG and s.postgres.pool_max_size == s.pg_pool_max_size == 3
    assert s.blobs.url == s.blob_url == "memory://b"
    assert s.daytona == DaytonaConfig(cpu=2)
    assert s.e2b == E2BConfig() and s.local_sandbox == LocalSandboxConfig()
    assert Settings() == Settings(**{part: cls() for part, cls in PARTS.items()})


def test_a_part_can_be_given_whole_and_a_flat_name_wins_over_it() -> None:
    s = Settings(sqlite=SQLiteConfig(path="a.db", readers=2), sqlite_path="b.db")
    assert s.sqlite == SQLiteConfig(path="b.db", readers=2)
    assert Settings.from_env({"OPENMA_SQLITE_PATH": "env.db"}, sqlite=SQLiteConfig(path="kw.db")).sqlite_path == "kw.db"
    env = {"DATABASE_URL": PG, "STORE_BACKENDS": '{"default": "pg"}'}
    other = PG.replace("app", "other")
    assert Settings.from_env(env, postgres=PostgresConfig(url=other)).postgres_url == other


def test_evolve_takes_flat_names_and_parts() -> None:
    s = Settings()
    assert attrs.evolve(s, sqlite_readers=3).sqlite.readers == 3
    assert attrs.evolve(s, blobs=BlobConfig(url="memory://x")).blob_url == "memory://x"
    assert attrs.evolve(s, sandbox="local") == s


def test_flat_names_are_read_only() -> None:
    s = Settings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.sqlite_path = "y.db"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.sqlite.path = "y.db"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "field", "needle"),
    [
        (lambda: SQLiteConfig(readers=0), "sqlite_readers", "sqlite_readers must be an integer from 1 to 256"),
        (lambda: SQLiteConfig(path=":memory:"), "sqlite_path", "sqlite_path must be a file path"),
        (lambda: PostgresConfig(url="mysql://x"), "postgres_url", "postgres_url must start with"),
        (lambda: PostgresConfig(pool_min_size=5, pool_max_size=2), "pg_pool_min_size", "exceeds pg_pool_max_size"),
        (lambda: BlobConfig(url="/a/path"), "blob_url", "blob_url must be an fsspec URL"),
        (lambda: BlobConfig(options=[1]), "blob_options", "blob_options must be a JSON object"),
        (lambda: LocalSandboxConfig(pass_env="OPENMA_ROOT_SECRET"), "local_sandbox_pass_env", "OPENMA_ROOT_SECRET"),
        (lambda: DaytonaConfig(cpu=0), "daytona_cpu", "daytona_cpu must be an integer from 1"),
        (lambda: Settings(sqlite=5), "sqlite", "sqlite must be a SQLiteConfig"),
        (lambda: Settings(postgres=SQLiteConfig()), "postgres", "postgres must be a PostgresConfig"),
    ],
)
def test_a_part_names_the_flat_setting_in_its_errors(build: Any, field: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert needle in info.value.message and info.value.details["field"] == field


def test_every_field_of_every_part_has_a_flat_name_and_a_variable() -> None:
    flat = {name for name, value in vars(Settings).items() if isinstance(value, _Flat)}
    assert flat == set(_FLAT)
    for name, (part, field) in _FLAT.items():
        assert (getattr(Settings, name).part, getattr(Settings, name).field) == (part, field)
    variables = [var for var, _ in _ENV.values()]
    assert len(variables) == len(set(variables)) == len(SETTINGS_FIELDS)
    assert (
        {f.name for f in SETTINGS_FIELDS}
        == set(_ENV)
        == set(_FLAT) | {f.name for f in attrs.fields(Settings) if f.name not in PARTS}
    )


def test_secrets_are_masked_in_the_parts_reprs() -> None:
    text = repr(BlobConfig(s3_access_key_id="AKIAKEYID", s3_secret_access_key="AWSSECRET"))
    text += repr(PostgresConfig(url=PG)) + repr(E2BConfig(api_key="E2BKEY")) + repr(DaytonaConfig(api_key="DTKEY"))
    text += repr(Settings(root_secret="TOPSECRET", e2b_api_key="E2BKEY", postgres_url=PG))
    for secret in ("AKIAKEYID", "AWSSECRET", "hunter2", "E2BKEY", "DTKEY", "TOPSECRET"):
        assert secret not in text
    assert "db:5432" in text and "'***'" in text


def test_the_docs_list_every_variable_and_their_tables_are_generated() -> None:
    doc = DOC.read_text(encoding="utf-8")
    missing = [var for var, _ in _ENV.values() if f"`{var}`" not in doc]
    assert not missing, f"docs/configuration.md does not list {missing}"
    assert render_docs(doc) == doc, "run: python -m openma.config docs/configuration.md"
    with pytest.raises(ConfigError, match="unknown settings table"):
        render_docs("<!-- settings: nowhere -->\n")
