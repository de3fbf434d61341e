"""The configuration of the storage engines and the blob store."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from openma._validators import boolean, integer_in, load_json, number_in, string
from openma.config._field import INT32, MAX_SECONDS, setting
from openma.errors import ConfigError

PG_SCHEME: Final = re.compile(r"^postgres(?:ql)?(?:\+(?:psycopg|psycopg2|psycopg2cffi|asyncpg|pg8000))?://", re.I)


# -- SQLite ----------------------------------------------------------------------------------------------


@attrs.frozen
class SQLiteConfig:
    """The SQLite engine of the "cf" backend."""

    path: str = setting(
        "sqlite_path",
        "OPENMA_SQLITE_PATH",
        'SQLite file of the "cf" backend; its directory is created. `:memory:` is refused (the engine uses '
        "several connections).",
        default="./.openma/openma.db",
        validator=string(),
    )
    busy_timeout_ms: int = setting(
        "sqlite_busy_timeout_ms",
        "OPENMA_SQLITE_BUSY_TIMEOUT_MS",
        "How long SQLite itself waits for another process's lock before each retry.",
        default=5_000,
        validator=integer_in(0, INT32),
        kind="int",
    )
    lock_timeout: float = setting(
        "sqlite_lock_timeout",
        "OPENMA_SQLITE_LOCK_TIMEOUT",
        "Total seconds a write waits for the database lock before failing with `StorageUnavailable`.",
        default=30.0,
        validator=number_in(0, MAX_SECONDS, above=True),
        kind="float",
    )
    readers: int = setting(
        "sqlite_readers",
        "OPENMA_SQLITE_READERS",
        "Reader connections (each on its own thread).",
        default=4,
        validator=integer_in(1, 256),
        kind="int",
    )
    poll_interval: float = setting(
        "sqlite_poll_interval",
        "OPENMA_SQLITE_POLL_INTERVAL",
        "Seconds between polls when tailing a session written by another process.",
        default=0.2,
        validator=number_in(0.001, 3600),
        kind="float",
    )

    def __attrs_post_init__(self) -> None:
        if self.path.strip() == ":memory:":
            raise ConfigError(
                "sqlite_path must be a file path (':memory:' cannot be shared by connections)", field="sqlite_path"
            )


# -- Postgres --------------------------------------------------------------------------------------------


def normalize_pg_url(value: Any) -> Any:
    """``postgresql+psycopg://`` and the other SQLAlchemy spellings → ``postgresql://`` (what libpq reads)."""
    if isinstance(value, str):
        match = PG_SCHEME.match(value)
        if match:
            return "postgresql://" + value[match.end() :]
    return value


def _pg_url(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(optional=True)(_, attribute, value)
    if value is not None and not value.startswith("postgresql://"):
        scheme = value.split("://", 1)[0] + "://" if "://" in value else "a value without a scheme"
        raise ConfigError(
            f"postgres_url must start with postgresql:// or postgres:// (postgresql+psycopg:// and "
            f"postgresql+asyncpg:// are accepted too), got {scheme}",
            field="postgres_url",
        )


@attrs.frozen
class PostgresConfig:
    """The Postgres engine of the "pg" backend (``pip install 'openma[pg]'``)."""

    url: str | None = setting(
        "postgres_url",
        "OPENMA_POSTGRES_URL",
        '`postgresql://user:pass@host:port/db` for the "pg" backend; `postgres://`, `postgresql+psycopg://` '
        "and `postgresql+asyncpg://` are accepted and stored as `postgresql://`. `DATABASE_URL` is the "
        "fallback (see below). The password never appears in a `repr`.",
        default=None,
        converter=normalize_pg_url,
        validator=_pg_url,
    )
    pool_min_size: int = setting(
        "pg_pool_min_size",
        "OPENMA_PG_POOL_MIN_SIZE",
        "Connections kept open.",
        default=1,
        validator=integer_in(0, 10_000),
        kind="int",
    )
    pool_max_size: int = setting(
        "pg_pool_max_size",
        "OPENMA_PG_POOL_MAX_SIZE",
        "Most connections the pool opens.",
        default=10,
        validator=integer_in(1, 10_000),
        kind="int",
    )
    connect_timeout: float = setting(
        "pg_connect_timeout",
        "OPENMA_PG_CONNECT_TIMEOUT",
        "Seconds to connect (and to wait for a pooled connection).",
        default=10.0,
        validator=number_in(0, MAX_SECONDS, above=True),
        kind="float",
    )
    statement_timeout_ms: int = setting(
        "pg_statement_timeout_ms",
        "OPENMA_PG_STATEMENT_TIMEOUT_MS",
        "Server-side `statement_timeout`; `0` disables it.",
        default=30_000,
        validator=integer_in(0, INT32),
        kind="int",
    )
    application_name: str = setting(
        "pg_application_name",
        "OPENMA_PG_APPLICATION_NAME",
        "Shown in `pg_stat_activity`.",
        default="openma",
        validator=string(blank=True),
    )
    prepared_statements: bool = setting(
        "pg_prepared_statements",
        "OPENMA_PG_PREPARED_STATEMENTS",
        "Server-side prepared statements. Set `false` behind a transaction-mode pooler such as pgbouncer.",
        default=True,
        validator=boolean,
        kind="bool",
    )

    def __attrs_post_init__(self) -> None:
        if self.pool_min_size > self.pool_max_size:
            raise ConfigError(
                f"pg_pool_min_size ({self.pool_min_size}) exceeds pg_pool_max_size ({self.pool_max_size})",
                field="pg_pool_min_size",
            )


# -- Blobs -----------------------------------------------------------------------------------------------


def _parse_blob_options(value: object) -> dict[str, Any]:
    if isinstance(value, str):
        value = load_json(value, "blob_options")
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigError("blob_options must be a JSON object (string keys)", field="blob_options")
    return dict(value)


@attrs.frozen
class BlobConfig:
    """The blob store: any fsspec URL, with the S3 (R2, MinIO) credentials when it is ``s3://``."""

    url: str = setting(
        "blob_url",
        "OPENMA_BLOB_URL",
        "fsspec URL of the blob store (`file://`, `memory://`, `s3://bucket/prefix`).",
        default="file://./.openma/blobs",
        validator=string(),
    )
    s3_endpoint_url: str | None = setting(
        "s3_endpoint_url",
        "OPENMA_S3_ENDPOINT_URL",
        "Endpoint of an S3-compatible store (R2, MinIO, ...).",
        default=None,
        validator=string(optional=True),
    )
    s3_region: str | None = setting(
        "s3_region", "OPENMA_S3_REGION", "Region name.", default=None, validator=string(optional=True)
    )
    s3_access_key_id: str | None = setting(
        "s3_access_key_id",
        "OPENMA_S3_ACCESS_KEY_ID",
        "Access key (hidden from `repr`).",
        default=None,
        validator=string(optional=True),
        secret=True,
    )
    s3_secret_access_key: str | None = setting(
        "s3_secret_access_key",
        "OPENMA_S3_SECRET_ACCESS_KEY",
        "Secret key (hidden from `repr`).",
        default=None,
        validator=string(optional=True),
        secret=True,
    )
    options: dict[str, Any] = setting(  # noqa: RUF009 (an attrs field: setting() returns attrs.field)
        "blob_options",
        "OPENMA_BLOB_OPTIONS",
        "JSON object of extra fsspec storage options.",
        factory=dict,
        converter=_parse_blob_options,
        kind="json",
    )

    def __attrs_post_init__(self) -> None:
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", self.url):
            raise ConfigError(
                f"blob_url must be an fsspec URL such as file://./.openma/blobs, got {self.url!r}", field="blob_url"
            )
