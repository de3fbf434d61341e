"""Settings: defaults, the environment, and every way STORE_BACKENDS can be wrong."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from openma import ConfigError, Settings
from openma.settings import STORE_NAMES

PG = "postgresql://u:pw@127.0.0.1:5432/db"


def test_defaults_are_the_embedded_platform() -> None:
    s = Settings()
    assert s.sqlite_path == "./.openma/openma.db"
    assert s.blob_url == "file://./.openma/blobs"
    assert s.sandbox == "local"
    assert s.event_spill_bytes == 500_000
    assert s.store_backends == {"default": "cf"}
    assert all(s.backend_for(store) == "cf" for store in STORE_NAMES)


def test_from_env_reads_every_documented_variable() -> None:
    env = {
        "OPENMA_SQLITE_PATH": "/tmp/x.db",
        "OPENMA_POSTGRES_URL": PG,
        "STORE_BACKENDS": '{"default":"cf","agents":"pg"}',
        "OPENMA_BLOB_URL": "memory://blobs",
        "OPENMA_ROOT_SECRET": "s3cr3t-value",
        "PER_TENANT_DB_ENABLED": "true",
        "OPENMA_SANDBOX": "local",
        "OPENMA_EVENT_SPILL_BYTES": "1234",
        "OPENMA_AUTO_MIGRATE": "0",
        "OPENMA_PG_POOL_MAX_SIZE": "3",
        "OPENMA_PG_PREPARED_STATEMENTS": "off",
        "OPENMA_BLOB_OPTIONS": '{"anon": false}',
    }
    s = Settings.from_env(env)
    assert s.sqlite_path == "/tmp/x.db"
    assert s.postgres_url == PG
    assert s.backend_for("agents") == "pg" and s.backend_for("sessions") == "cf"
    assert s.blob_url == "memory://blobs"
    assert s.root_secret == "s3cr3t-value"
    assert s.per_tenant_db_enabled is True
    assert s.event_spill_bytes == 1234
    assert s.auto_migrate is False
    assert s.pg_pool_max_size == 3
    assert s.pg_prepared_statements is False
    assert s.blob_options == {"anon": False}


def test_database_url_is_the_fallback_and_overrides_win() -> None:
    assert Settings.from_env({"DATABASE_URL": PG}).postgres_url == PG
    assert Settings.from_env({"DATABASE_URL": PG, "OPENMA_POSTGRES_URL": PG + "2"}).postgres_url == PG + "2"
    assert Settings.from_env({}, sandbox="local", event_spill_bytes=7).event_spill_bytes == 7


def test_secrets_never_appear_in_repr() -> None:
    s = Settings(
        root_secret="TOPSECRET",
        postgres_url="postgresql://user:hunter2@db:5432/x",
        s3_secret_access_key="AWSSECRET",
        s3_access_key_id="AKIAKEYID",
    )
    text = repr(s)
    for secret in ("TOPSECRET", "hunter2", "AWSSECRET", "AKIAKEYID"):
        assert secret not in text
    assert "***" in text and "db:5432" in text
    assert repr(Settings()) == "Settings()"


def test_settings_are_frozen_and_evolve() -> None:
    s = Settings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.sandbox = "e2b"  # type: ignore[misc]
    assert attrs.evolve(s, event_spill_bytes=10).event_spill_bytes == 10


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('["cf"]', "must be a JSON object"),
        ('"cf"', "must be a JSON object"),
        ("42", "must be a JSON object"),
        ("null", "must be a JSON object"),
        ('{"agentz": "cf"}', "unknown store 'agentz'"),
        ('{"": "cf"}', "unknown store ''"),
        ('{"Agents": "cf"}', "unknown store 'Agents'"),
        ('{"default": "mysql"}', "unknown backend 'mysql'"),
        ('{"agents": "CF"}', "unknown backend 'CF'"),
        ('{"agents": ""}', "unknown backend ''"),
        ('{"agents": 1}', "must be a backend name string"),
        ('{"agents": null}', "must be a backend name string"),
        ('{"agents": ["cf"]}', "must be a backend name string"),
        ('{"agents": {"name": "pg"}}', "must be a backend name string"),
        ('{"agents": "pg"}', "no Postgres URL"),
        ('{"default": "pg"}', "no Postgres URL"),
    ],
)
def test_bad_store_backends(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"STORE_BACKENDS": value} if value else {}, store_backends=value)
    message = str(info.value)
    assert needle in message
    assert info.value.code == "config_error"
    if "unknown store" in needle:
        assert "agents" in message and "sessions" in message  # lists the valid stores
    if "unknown backend" in needle or "backend name string" in needle:
        assert "cf" in message and "pg" in message  # lists the valid backends


def test_store_backends_accepts_a_mapping() -> None:
    s = Settings(store_backends={"default": "cf", "kv": "pg"}, postgres_url=PG)
    assert s.backend_for("kv") == "pg" and s.backend_for("agents") == "cf"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OPENMA_EVENT_SPILL_BYTES": "lots"}, "OPENMA_EVENT_SPILL_BYTES must be an integer"),
        ({"OPENMA_EVENT_SPILL_BYTES": "0"}, "event_spill_bytes must be a positive number"),
        ({"OPENMA_EVENT_SPILL_BYTES": "-5"}, "event_spill_bytes must be a positive number"),
        ({"PER_TENANT_DB_ENABLED": "maybe"}, "PER_TENANT_DB_ENABLED must be one of"),
        ({"OPENMA_SANDBOX": "docker"}, "unknown sandbox 'docker'"),
        ({"OPENMA_POSTGRES_URL": "mysql://x"}, "postgres_url must start with"),
        ({"OPENMA_SQLITE_PATH": ":memory:"}, "sqlite_path must be a file path"),
        ({"OPENMA_BLOB_URL": "/just/a/path"}, "blob_url must be an fsspec URL"),
        ({"OPENMA_PG_POOL_MIN_SIZE": "5", "OPENMA_PG_POOL_MAX_SIZE": "2"}, "exceeds pg_pool_max_size"),
        ({"OPENMA_PG_CONNECT_TIMEOUT": "soon"}, "OPENMA_PG_CONNECT_TIMEOUT must be a number"),
        ({"OPENMA_BLOB_OPTIONS": "[1]"}, "OPENMA_BLOB_OPTIONS must be a JSON object"),
        ({"OPENMA_BLOB_OPTIONS": "{"}, "OPENMA_BLOB_OPTIONS must be a JSON object"),
    ],
)
def test_bad_environment(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert needle in str(info.value)


def test_unknown_sandbox_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(sandbox="vmware")
    assert "local" in str(info.value) and "e2b" in str(info.value) and "daytona" in str(info.value)


def test_registered_backends_become_valid_choices() -> None:
    from openma import registry

    async def factory(settings: Any) -> Any:  # pragma: no cover - never opened here
        raise AssertionError

    registry.store_backends.register("dynamo", factory)
    try:
        s = Settings(store_backends=json.dumps({"default": "cf", "agents": "dynamo"}))
        assert s.backend_for("agents") == "dynamo"
    finally:
        registry.store_backends.unregister("dynamo")
    with pytest.raises(ConfigError):
        Settings(store_backends={"agents": "dynamo"})
