"""Settings: defaults, the environment, and every way STORE_BACKENDS can be wrong."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openma import ConfigError, Settings
from openma.core.events import MAX_EVENT_BYTES
from openma.settings import _ENV, SETTINGS_FIELDS, STORE_NAMES

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
        "PER_TENANT_DB_ENABLED": "false",
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
    assert s.per_tenant_db_enabled is False
    assert s.event_spill_bytes == 1234
    assert s.auto_migrate is False
    assert s.pg_pool_max_size == 3
    assert s.pg_prepared_statements is False
    assert s.blob_options == {"anon": False}


def test_per_tenant_databases_are_refused_until_supported() -> None:
    with pytest.raises(ConfigError, match="per_tenant_db_enabled is not supported yet") as info:
        Settings(per_tenant_db_enabled=True)
    assert info.value.details["field"] == "per_tenant_db_enabled"
    with pytest.raises(ConfigError, match="^PER_TENANT_DB_ENABLED: per_tenant_db_enabled is not supported"):
        Settings.from_env({"PER_TENANT_DB_ENABLED": "yes"})


def test_database_url_is_the_fallback_only_when_a_store_is_on_pg() -> None:
    on_pg = {"STORE_BACKENDS": '{"default": "pg"}'}
    assert Settings.from_env({"DATABASE_URL": PG, **on_pg}).postgres_url == PG
    both = {"DATABASE_URL": PG, "OPENMA_POSTGRES_URL": PG + "2", **on_pg}
    assert Settings.from_env(both).postgres_url == PG + "2"
    assert Settings.from_env({"DATABASE_URL": PG}, store_backends={"agents": "pg"}).postgres_url == PG
    assert Settings.from_env({}, sandbox="local", event_spill_bytes=7).event_spill_bytes == 7


@pytest.mark.parametrize("url", ["sqlite:///app.db", "mysql://u:pw@db/app", "postgresql+asyncpg://u:pw@db/app", PG])
def test_an_unrelated_database_url_is_ignored_when_no_store_is_on_pg(url: str) -> None:
    s = Settings.from_env({"DATABASE_URL": url})
    assert s.postgres_url is None and s == Settings()


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql+asyncpg", "postgres", "postgresql"])
def test_sqlalchemy_style_postgres_urls_are_accepted(driver: str) -> None:
    expected = "postgresql://u:pw@db:5432/app"
    env = {"DATABASE_URL": f"{driver}://u:pw@db:5432/app", "STORE_BACKENDS": '{"default": "pg"}'}
    assert Settings.from_env(env).postgres_url == expected
    assert Settings(postgres_url=f"{driver}://u:pw@db:5432/app").postgres_url == expected


@pytest.mark.parametrize("var", ["DATABASE_URL", "OPENMA_POSTGRES_URL"])
def test_a_bad_postgres_url_names_its_variable_without_the_password(var: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: "mysql://u:hunter2@db/app", "STORE_BACKENDS": '{"default": "pg"}'})
    assert info.value.message.startswith(f"{var}: postgres_url must start with postgresql://")
    assert info.value.details["variable"] == var and "hunter2" not in str(info.value)


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
        ('{"vault": "cf"}', "unknown store 'vault'"),
        ('{"memory": "pg"}', "unknown store 'memory'"),
        ('{"files": "cf"}', "unknown store 'files'"),
        ('{"usages": "cf"}', "unknown store 'usages'"),
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
        ({"OPENMA_EVENT_SPILL_BYTES": "0"}, "OPENMA_EVENT_SPILL_BYTES: event_spill_bytes must be an integer from 1"),
        ({"OPENMA_EVENT_SPILL_BYTES": "-5"}, "OPENMA_EVENT_SPILL_BYTES: event_spill_bytes must be an integer from 1"),
        ({"OPENMA_EVENT_SPILL_BYTES": "1.5"}, "OPENMA_EVENT_SPILL_BYTES must be an integer"),
        ({"OPENMA_EVENT_SPILL_BYTES": str(64 * 1024 * 1024 + 1)}, "event_spill_bytes must be an integer from 1 to"),
        ({"OPENMA_SQLITE_POLL_INTERVAL": "nan"}, "OPENMA_SQLITE_POLL_INTERVAL must be a finite number"),
        ({"OPENMA_SQLITE_LOCK_TIMEOUT": "inf"}, "OPENMA_SQLITE_LOCK_TIMEOUT must be a finite number"),
        ({"OPENMA_PG_CONNECT_TIMEOUT": "1e400"}, "OPENMA_PG_CONNECT_TIMEOUT: pg_connect_timeout must be a finite"),
        ({"OPENMA_SQLITE_READERS": "0"}, "OPENMA_SQLITE_READERS: sqlite_readers must be an integer from 1"),
        ({"OPENMA_SQLITE_READERS": "9" * 5000}, "OPENMA_SQLITE_READERS must be an integer"),
        ({"OPENMA_LOCAL_SANDBOX_PASS_ENV": "PATH,1BAD"}, "OPENMA_LOCAL_SANDBOX_PASS_ENV: local_sandbox_pass_env"),
        ({"OPENMA_AUTO_MIGRATE": "maybe"}, "OPENMA_AUTO_MIGRATE must be one of"),
        ({"OPENMA_BLOB_OPTIONS": "[" * 100_000}, "OPENMA_BLOB_OPTIONS is not usable JSON"),
        ({"STORE_BACKENDS": "[" * 100_000}, "STORE_BACKENDS is not usable JSON"),
        ({"PER_TENANT_DB_ENABLED": "maybe"}, "PER_TENANT_DB_ENABLED must be one of"),
        ({"OPENMA_SANDBOX": "docker"}, "unknown sandbox 'docker'"),
        ({"OPENMA_POSTGRES_URL": "mysql://x"}, "OPENMA_POSTGRES_URL: postgres_url must start with"),
        ({"OPENMA_SQLITE_PATH": ":memory:"}, "OPENMA_SQLITE_PATH: sqlite_path must be a file path"),
        ({"OPENMA_BLOB_URL": "/just/a/path"}, "OPENMA_BLOB_URL: blob_url must be an fsspec URL"),
        ({"OPENMA_PG_POOL_MIN_SIZE": "5", "OPENMA_PG_POOL_MAX_SIZE": "2"}, "exceeds pg_pool_max_size"),
        ({"OPENMA_PG_CONNECT_TIMEOUT": "soon"}, "OPENMA_PG_CONNECT_TIMEOUT must be a finite number"),
        ({"OPENMA_BLOB_OPTIONS": "[1]"}, "OPENMA_BLOB_OPTIONS must be a JSON object"),
        ({"OPENMA_BLOB_OPTIONS": "{"}, "OPENMA_BLOB_OPTIONS is not valid JSON"),
    ],
)
def test_bad_environment(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert needle in str(info.value)
    assert info.value.code == "config_error"


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


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sqlite_readers": 2.5}, "sqlite_readers must be an integer"),
        ({"sqlite_readers": True}, "sqlite_readers must be an integer"),
        ({"blob_url": None}, "blob_url must be a string"),
        ({"sqlite_path": 5}, "sqlite_path must be a string"),
        ({"sqlite_path": "a\x00b"}, "sqlite_path must not contain control characters"),
        ({"sqlite_path": "  "}, "sqlite_path must not be empty"),
        ({"auto_migrate": "no"}, "auto_migrate must be True or False"),
        ({"auto_migrate": 0}, "auto_migrate must be True or False"),
        ({"pg_prepared_statements": None}, "pg_prepared_statements must be True or False"),
        ({"event_spill_bytes": 1.5}, "event_spill_bytes must be an integer"),
        ({"event_spill_bytes": MAX_EVENT_BYTES + 1}, "event_spill_bytes must be an integer from 1 to"),
        ({"sqlite_poll_interval": math.nan}, "sqlite_poll_interval must be a finite number"),
        ({"sqlite_lock_timeout": math.inf}, "sqlite_lock_timeout must be a finite number"),
        ({"pg_connect_timeout": -math.inf}, "pg_connect_timeout must be a finite number"),
        ({"pg_connect_timeout": 10**400}, "pg_connect_timeout must be a finite number"),
        ({"local_sandbox_kill_grace": math.nan}, "local_sandbox_kill_grace must be a finite number"),
        ({"local_sandbox_memory_bytes": 2**63}, "local_sandbox_memory_bytes must be an integer from 0"),
        ({"pg_statement_timeout_ms": 2**31}, "pg_statement_timeout_ms must be an integer from 0"),
        ({"root_secret": 123}, "root_secret must be a string or None"),
        ({"e2b_api_key": b"k"}, "e2b_api_key must be a string or None"),
        ({"sandbox": None}, "sandbox must be a string"),
        ({"postgres_url": 5}, "postgres_url must be a string or None"),
        ({"blob_options": [1]}, "blob_options must be a JSON object"),
        ({"blob_options": {1: "x"}}, "blob_options must be a JSON object"),
        ({"local_sandbox_pass_env": [1]}, "local_sandbox_pass_env has an invalid variable name"),
    ],
)
def test_wrong_types_and_ranges_are_config_errors_naming_the_field(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**kwargs)
    assert info.value.message.startswith(needle), info.value.message
    assert info.value.details["field"] == next(iter(kwargs))
    with pytest.raises(ConfigError):
        attrs.evolve(Settings(), **kwargs)


def test_ints_are_numbers_and_floats_are_not_ints() -> None:
    s = Settings(sqlite_lock_timeout=5, pg_connect_timeout=2, local_sandbox_kill_grace=0)
    assert s.sqlite_lock_timeout == 5 and s.pg_connect_timeout == 2
    assert Settings(event_spill_bytes=MAX_EVENT_BYTES).event_spill_bytes == MAX_EVENT_BYTES


def test_from_url() -> None:
    s = Settings.from_url("sqlite:///data/app.db")
    assert s.sqlite_path == "data/app.db" and s.store_backends == {"default": "cf"}
    assert Settings.from_url("sqlite:////tmp/app%20x.db").sqlite_path == "/tmp/app x.db"
    pg = Settings.from_url("postgresql+psycopg://u:pw@db:5432/app", pg_pool_max_size=3)
    assert pg.postgres_url == "postgresql://u:pw@db:5432/app" and pg.backend_for("sessions") == "pg"
    assert pg.pg_pool_max_size == 3
    for bad in [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/app.db",
        "sqlite:///a.db?mode=ro",
        "sqlite:///:memory:",
        "sqlite://[::1/x",
    ]:
        with pytest.raises(ConfigError):
            Settings.from_url(bad)
    for bad_url in ["mysql://u:hunter2@db/app", "app.db", 5, None]:
        with pytest.raises(ConfigError) as info:
            Settings.from_url(bad_url)  # type: ignore[arg-type]
        assert "hunter2" not in str(info.value)


_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.01, max_value=100),
    st.text(max_size=12),
    st.sampled_from(["cf", "pg", "local", "e2b", "file://x", "memory://b", "postgresql://u@h/d", "[[[", "{}"]),
    st.binary(max_size=4),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.sampled_from(["default", *STORE_NAMES, "vault", "x"]), st.sampled_from(["cf", "pg", 1])),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.integers(), max_size=2),
)


_EDGES = [0, 1, 2, 256, 257, 10_000, 2**31 - 1, 2**31, 2**40, 2**62, 2**62 + 1, MAX_EVENT_BYTES, MAX_EVENT_BYTES + 1]


def _near(field: attrs.Attribute[Any]) -> st.SearchStrategy[Any]:
    """Values around what ``field`` accepts, so that many examples build and the bounds are crossed."""
    default = field.default
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.integers(min_value=-2, max_value=300), st.sampled_from(_EDGES))
    if isinstance(default, float):
        return st.one_of(st.floats(min_value=-1, max_value=90_000), st.sampled_from([0, 0.001, 3600, 86_400, 86_401]))
    return st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["x.db", "memory://b", "local", "PATH,TZ"]))


_BY_FIELD = {f.name: st.one_of(_near(f), _ANY) for f in SETTINGS_FIELDS}
_KWARGS = st.lists(st.sampled_from(sorted(_BY_FIELD)), max_size=5, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: _BY_FIELD[name] for name in names})
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_KWARGS)
def test_any_keywords_build_valid_settings_or_raise_config_error(kwargs: dict[str, Any]) -> None:
    try:
        s = Settings(**kwargs)
    except ConfigError as exc:
        error: ConfigError | None = exc
    else:
        error = None
    if error is not None:
        assert error.code == "config_error" and error.message
        return
    for field in SETTINGS_FIELDS:
        value = getattr(s, field.name)
        if isinstance(field.default, bool):
            assert isinstance(value, bool), field.name
        elif isinstance(field.default, int):
            assert isinstance(value, int) and not isinstance(value, bool), field.name
        elif isinstance(field.default, float):
            assert isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        elif isinstance(field.default, str):
            assert isinstance(value, str), field.name
    assert 1 <= s.event_spill_bytes <= MAX_EVENT_BYTES
    assert s.pg_pool_min_size <= s.pg_pool_max_size
    assert all(s.backend_for(store) in ("cf", "pg") for store in STORE_NAMES)
    repr(s)


def test_from_env_and_from_url_refuse_what_is_not_a_setting() -> None:
    with pytest.raises(ConfigError, match="environ must be a mapping"):
        Settings.from_env(5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="OPENMA_SQLITE_READERS must be a string"):
        Settings.from_env({"OPENMA_SQLITE_READERS": 4})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_env({}, sqlite_pth="x.db")
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_url("sqlite:///x.db", blob="memory://x")
    assert Settings.from_env({"OPENMA_SQLITE_READERS": "bad"}, sqlite_readers=2).sqlite_readers == 2


def test_registry_names_and_factories_are_checked() -> None:
    from openma import registry

    with pytest.raises(ConfigError):
        registry.sandboxes.register(5, lambda s: s)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="factory must be"):
        registry.sandboxes.register("nothing", 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a string"):
        registry.store_backends.load(["cf"])  # type: ignore[arg-type]
    assert not registry.store_backends.has(["cf"]) and registry.store_backends.has("cf")


_VARS = sorted({var for var, _ in _ENV.values()} | {"DATABASE_URL"})
_ENV_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["nan", "inf", "-1", "0", "1", "2.5", "1e400", "true", "off", "{}", '{"default":"pg"}', "x://y"]),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_VARS), _ENV_TEXT, max_size=5), st.text(max_size=20))
def test_any_environment_or_url_builds_valid_settings_or_raises_config_error(env: dict[str, str], url: str) -> None:
    for build in (lambda: Settings.from_env(env), lambda: Settings.from_url(url)):
        try:
            s = build()
        except ConfigError as exc:
            error: ConfigError | None = exc
        else:
            error = None
            assert all(math.isfinite(getattr(s, f.name)) for f in SETTINGS_FIELDS if f.type == "float")
        assert error is None or error.code == "config_error"


def test_an_unknown_field_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'sqlite_pth' \(did you mean 'sqlite_path'\?\)") as info:
        Settings(sqlite_pth="x.db")
    assert info.value.code == "config_error"
    with pytest.raises(ConfigError, match="'no_such_thing'"):
        Settings(no_such_thing=1)
