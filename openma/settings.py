"""Every knob of openma, in one frozen ``attrs`` class, validated once at construction.

``Settings()`` is the embedded default (SQLite and files under ``./.openma``, the local sandbox).
``Settings.from_env()`` reads the environment variables listed in ``docs/configuration.md``;
``Settings.from_url()`` builds settings from one database URL. A bad value is a
:class:`~openma.errors.ConfigError` that names the variable (or field) and what is valid; nothing is silently
replaced by a default, and no other exception escapes ``Settings(...)``: every field is checked for its type
(a bool is not an int, an int is not a str, a float is not an int) and its range (no NaN, no infinity).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import attrs

from openma import registry
from openma._validators import boolean, describe, integer_in, load_json, number_in, string
from openma.core.events import MAX_EVENT_BYTES
from openma.errors import ConfigError

#: The stores whose backend can be chosen one by one in ``STORE_BACKENDS`` (each new store adds its name).
STORE_NAMES: Final = ("tenants", "agents", "environments", "sessions", "kv")
DEFAULT_KEY: Final = "default"

#: Longest duration setting, in seconds (one day): a longer timeout or poll interval is a typo.
MAX_SECONDS: Final = 86_400.0
_INT32: Final = 2**31 - 1
#: Largest byte count (rlimits and sizes must fit a signed 64-bit integer, with room to double).
_MAX_BYTES: Final = 2**62
_PG_SCHEME: Final = re.compile(r"^postgres(?:ql)?(?:\+(?:psycopg|psycopg2|psycopg2cffi|asyncpg|pg8000))?://", re.I)


def _normalize_pg_url(value: Any) -> Any:
    """``postgresql+psycopg://`` and the other SQLAlchemy spellings → ``postgresql://`` (what libpq reads)."""
    if isinstance(value, str):
        match = _PG_SCHEME.match(value)
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
            field=attribute.name,
        )


def _parse_store_backends(value: object) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = load_json(value, "STORE_BACKENDS")
        except ConfigError as exc:
            raise ConfigError(
                f'{exc.message}; expected an object such as {{"default": "cf", "agents": "pg"}}',
                field="store_backends",
            ) from None
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"STORE_BACKENDS must be a JSON object mapping store names to backends, got {type(value).__name__}",
            field="store_backends",
        )
    valid_keys = (DEFAULT_KEY, *STORE_NAMES)
    out: dict[str, str] = {}
    for key, backend in value.items():
        if isinstance(backend, str) and key in valid_keys and registry.store_backends.has(backend):
            out[key] = backend
            continue
        backends = registry.store_backends.names()
        if key not in valid_keys:
            raise ConfigError(
                f"STORE_BACKENDS has unknown store {key!r}; valid stores: {', '.join(valid_keys)}",
                field="store_backends",
                store=key,
                choices=list(valid_keys),
            )
        if not isinstance(backend, str):
            raise ConfigError(
                f"STORE_BACKENDS[{key!r}] must be a backend name string, got {type(backend).__name__}; "
                f"valid backends: {', '.join(backends)}",
                field="store_backends",
                store=key,
                choices=backends,
            )
        if backend not in backends:
            raise ConfigError(
                f"STORE_BACKENDS[{key!r}] names unknown backend {backend!r}; valid backends: {', '.join(backends)}",
                field="store_backends",
                store=key,
                choices=backends,
            )
        out[key] = backend
    out.setdefault(DEFAULT_KEY, "cf")
    return out


def _parse_blob_options(value: object) -> dict[str, Any]:
    if isinstance(value, str):
        value = load_json(value, "blob_options")
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigError("blob_options must be a JSON object (string keys)", field="blob_options")
    return dict(value)


#: Host variables a local sandbox passes to its commands by default.
LOCAL_SANDBOX_PASS_ENV: Final = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


def _parse_pass_env(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ConfigError("local_sandbox_pass_env must be a list of variable names", field="local_sandbox_pass_env")
    out = []
    for name in value:
        name = name.strip() if isinstance(name, str) else name
        if name == "":
            continue
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(
                f"local_sandbox_pass_env has an invalid variable name {name!r}", field="local_sandbox_pass_env"
            )
        if name == "OPENMA_ROOT_SECRET":
            raise ConfigError(
                "OPENMA_ROOT_SECRET can never be passed to sandboxed commands", field="local_sandbox_pass_env"
            )
        out.append(name)
    return tuple(out)


#: Connection parameters whose values are secrets (or say where one is kept), in a URL query or a DSN.
_SECRET_KEYS: Final = ("password", "sslpassword", "passfile")
_KEYS: Final = "|".join(_SECRET_KEYS)
#: ``scheme://user:password@``: everything between the first ``:`` of the userinfo and its last ``@``.
_URL_USERINFO: Final = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*:)(?P<secret>[^/?#\s'\"]*)(?=@)")
#: ``?password=...`` / ``&sslpassword=...`` in a URL query (the value ends at ``&``, ``#``, a quote or a space).
_URL_PARAM: Final = re.compile(rf"(?P<head>[?&](?:{_KEYS})=)(?P<secret>[^&#\s'\"]*)", re.I)
#: ``password = 'quoted \' value'`` or ``password=bare`` in a key=value DSN.
_DSN_PARAM: Final = re.compile(
    rf"(?P<head>(?<![\w?&])(?:{_KEYS})\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'?|[^\s'\"]*)", re.I
)
_SCHEME: Final = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
MASK: Final = "***"


def _secrets_in(conninfo: str) -> set[str]:
    """The secret values written in ``conninfo`` (a URL or a DSN): as written, percent-decoded, unquoted."""
    raws: list[str] = []
    scheme = _SCHEME.match(conninfo)
    if scheme:  # a whole URL: its userinfo ends at the last '@' before the path, whatever it holds
        rest = conninfo[scheme.end() :]
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        at = rest.rfind("@", 0, end)
        if at >= 0 and ":" in rest[:at]:
            raws.append(rest[:at].split(":", 1)[1])
    for pattern in (_URL_USERINFO, _URL_PARAM, _DSN_PARAM):
        for match in pattern.finditer(conninfo):
            raw = match.group("secret")
            if raw.startswith("'"):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1] if raw.endswith("'") and len(raw) > 1 else raw[1:])
            raws.append(raw)
    found: set[str] = set()
    for raw in raws:
        found.update({raw, unquote(raw), quote(raw, safe=""), *raw.split("@")})
    found.discard("")
    return found


def redact_secrets(text: str, *conninfos: str | None) -> str:
    """``text`` with every connection secret masked, for a message, a log line or a repr.

    Masks the password of any ``scheme://user:password@`` URL, the ``password``, ``sslpassword`` and
    ``passfile`` parameters of a URL query or a key=value DSN, and every secret value written in
    ``conninfos`` wherever it appears (a driver's error message may quote a token of the URL it could not
    parse, out of context). Use it on every message built from a driver error.
    """
    secrets = set().union(*(_secrets_in(c) for c in conninfos if c))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern in (_URL_USERINFO, _URL_PARAM, _DSN_PARAM):
        text = pattern.sub(lambda m: f"{m.group('head')}{MASK}" if m.group("secret") else m.group(0), text)
    return text


def _mask_url(url: str | None) -> str | None:
    """``url`` with its secrets masked (see :func:`redact_secrets`)."""
    if not url:
        return url
    return redact_secrets(url, url)


@attrs.frozen(repr=False)
class Settings:
    """Configuration of a :class:`~openma.Platform`. Immutable; use :func:`attrs.evolve` to vary it.

    Every field is validated by ``Settings(...)`` (and so by ``attrs.evolve``): a value of the wrong type or
    out of range is a :class:`~openma.errors.ConfigError` whose ``details["field"]`` names the field.
    """

    #: SQLite database file of the "cf" backend (``:memory:`` is refused: the engine needs several connections).
    sqlite_path: str = attrs.field(default="./.openma/openma.db", validator=string())
    #: Postgres URL of the "pg" backend (``postgresql://user:pass@host:port/db``; the SQLAlchemy spellings
    #: ``postgresql+psycopg://`` and ``postgresql+asyncpg://`` are read as ``postgresql://``).
    postgres_url: str | None = attrs.field(default=None, converter=_normalize_pg_url, validator=_pg_url)
    #: Which backend holds which store; ``default`` covers the stores not named.
    store_backends: dict[str, str] = attrs.field(factory=lambda: {DEFAULT_KEY: "cf"}, converter=_parse_store_backends)
    #: fsspec URL of the blob store (``file://``, ``memory://``, ``s3://bucket/prefix``).
    blob_url: str = attrs.field(default="file://./.openma/blobs", validator=string())
    #: Root secret that vault keys are derived from; never printed.
    root_secret: str | None = attrs.field(default=None, repr=False, validator=string(optional=True))
    per_tenant_db_enabled: bool = attrs.field(default=False, validator=boolean)
    #: Sandbox provider name: ``local``, ``e2b``, ``daytona`` or a registered name.
    sandbox: str = attrs.field(default="local", validator=string())
    #: Events whose JSON is larger than this many bytes are spilled to the blob store (at most the event
    #: size cap, :data:`openma.core.events.MAX_EVENT_BYTES`).
    event_spill_bytes: int = attrs.field(default=500_000, validator=integer_in(1, MAX_EVENT_BYTES))
    #: Apply pending migrations when a platform opens.
    auto_migrate: bool = attrs.field(default=True, validator=boolean)

    # -- SQLite engine
    sqlite_busy_timeout_ms: int = attrs.field(default=5_000, validator=integer_in(0, _INT32))
    #: Total time a write waits for the database lock (other processes) before failing.
    sqlite_lock_timeout: float = attrs.field(default=30.0, validator=number_in(0, MAX_SECONDS, above=True))
    sqlite_readers: int = attrs.field(default=4, validator=integer_in(1, 256))
    sqlite_poll_interval: float = attrs.field(default=0.2, validator=number_in(0.001, 3600))

    # -- Postgres engine
    pg_pool_min_size: int = attrs.field(default=1, validator=integer_in(0, 10_000))
    pg_pool_max_size: int = attrs.field(default=10, validator=integer_in(1, 10_000))
    pg_connect_timeout: float = attrs.field(default=10.0, validator=number_in(0, MAX_SECONDS, above=True))
    pg_statement_timeout_ms: int = attrs.field(default=30_000, validator=integer_in(0, _INT32))
    pg_application_name: str = attrs.field(default="openma", validator=string(blank=True))
    #: Server-side prepared statements; turn off behind a transaction-mode pooler (pgbouncer).
    pg_prepared_statements: bool = attrs.field(default=True, validator=boolean)

    # -- Blob store (S3 / R2 / MinIO)
    s3_endpoint_url: str | None = attrs.field(default=None, validator=string(optional=True))
    s3_region: str | None = attrs.field(default=None, validator=string(optional=True))
    s3_access_key_id: str | None = attrs.field(default=None, repr=False, validator=string(optional=True))
    s3_secret_access_key: str | None = attrs.field(default=None, repr=False, validator=string(optional=True))
    #: Extra fsspec storage options for the blob store.
    blob_options: dict[str, Any] = attrs.field(factory=dict, converter=_parse_blob_options)

    # -- Sandbox providers
    #: E2B API key (``pip install 'openma[e2b]'``); never printed.
    e2b_api_key: str | None = attrs.field(default=None, repr=False, validator=string(optional=True))
    #: E2B domain (default ``e2b.app``; set it for a self-hosted E2B).
    e2b_domain: str | None = attrs.field(default=None, validator=string(optional=True))
    #: E2B control-plane URL override (the SDK marks it internal; for tests and proxies).
    e2b_api_url: str | None = attrs.field(default=None, validator=string(optional=True))
    #: E2B envd URL override for every sandbox (the SDK marks it internal; for tests and proxies).
    e2b_sandbox_url: str | None = attrs.field(default=None, validator=string(optional=True))
    #: E2B template name or id for new sandboxes (default ``base``).
    e2b_template: str | None = attrs.field(default=None, validator=string(optional=True))
    #: Daytona API key (``pip install 'openma[daytona]'``); never printed.
    daytona_api_key: str | None = attrs.field(default=None, repr=False, validator=string(optional=True))
    #: Daytona API URL (default ``https://app.daytona.io/api``).
    daytona_api_url: str | None = attrs.field(default=None, validator=string(optional=True))
    #: Daytona target region.
    daytona_target: str | None = attrs.field(default=None, validator=string(optional=True))
    #: Daytona image for new sandboxes (default: Daytona's default snapshot).
    daytona_image: str | None = attrs.field(default=None, validator=string(optional=True))
    #: Daytona resources for new sandboxes built from an image: vCPUs, memory and disk in GiB (None: Daytona's).
    daytona_cpu: int | None = attrs.field(default=None, validator=attrs.validators.optional(integer_in(1, 1024)))
    daytona_memory: int | None = attrs.field(default=None, validator=attrs.validators.optional(integer_in(1, 65536)))
    daytona_disk: int | None = attrs.field(default=None, validator=attrs.validators.optional(integer_in(1, 65536)))

    # -- Sandbox upkeep (run by the orchestrator while the platform is open; 0 turns one off)
    #: Seconds between upkeep passes: each keeps the live sandboxes alive and reaps the idle ones.
    sandbox_keepalive_interval: float = attrs.field(default=300.0, validator=number_in(0, 86_400.0))
    #: Seconds a sandbox may go unused before it is reaped (snapshotted, then destroyed).
    sandbox_idle_reap_after: float = attrs.field(default=1800.0, validator=number_in(0, 31_536_000.0))

    # -- Local sandboxes (LocalSubprocess; 0 turns a limit off)
    #: Directory holding one directory per local sandbox.
    local_sandbox_root: str = attrs.field(default="./.openma/sandboxes", validator=string())
    #: Bytes kept of each of stdout and stderr of a command (and of a background process's logs).
    local_sandbox_output_bytes: int = attrs.field(default=1 << 20, validator=integer_in(1, 1 << 40))
    #: Resident memory of one command's processes together; past it they are killed (exit 137, oom_killed).
    local_sandbox_memory_bytes: int = attrs.field(default=2 << 30, validator=integer_in(0, _MAX_BYTES))
    #: CPU seconds per process.
    local_sandbox_cpu_seconds: int = attrs.field(default=3600, validator=integer_in(0, _INT32))
    #: Open file descriptors per process.
    local_sandbox_open_files: int = attrs.field(default=1024, validator=integer_in(0, _INT32))
    #: Processes of the host user (RLIMIT_NPROC counts all of that user's processes; root is exempt).
    local_sandbox_processes: int = attrs.field(default=4096, validator=integer_in(0, _INT32))
    #: Seconds between SIGTERM and SIGKILL when a command is stopped.
    local_sandbox_kill_grace: float = attrs.field(default=2.0, validator=number_in(0, 3600))
    #: Host variables that commands may see; everything else of the host's environment stays out.
    local_sandbox_pass_env: tuple[str, ...] = attrs.field(default=LOCAL_SANDBOX_PASS_ENV, converter=_parse_pass_env)

    def __attrs_post_init__(self) -> None:
        if self.sqlite_path.strip() == ":memory:":
            raise ConfigError(
                "sqlite_path must be a file path (':memory:' cannot be shared by connections)", field="sqlite_path"
            )
        if self.pg_pool_min_size > self.pg_pool_max_size:
            raise ConfigError(
                f"pg_pool_min_size ({self.pg_pool_min_size}) exceeds pg_pool_max_size ({self.pg_pool_max_size})",
                field="pg_pool_min_size",
            )
        if "pg" in self.store_backends.values() and not self.postgres_url:
            stores = sorted(s for s, b in self.store_backends.items() if b == "pg")
            raise ConfigError(
                f"STORE_BACKENDS puts {', '.join(stores)} on 'pg' but no Postgres URL is set; "
                "set OPENMA_POSTGRES_URL (or DATABASE_URL)",
                field="postgres_url",
                stores=stores,
            )
        if not registry.sandboxes.has(self.sandbox):
            sandboxes = registry.sandboxes.names()
            raise ConfigError(
                f"unknown sandbox {self.sandbox!r}; valid choices: {', '.join(sandboxes)}",
                field="sandbox",
                choices=sandboxes,
            )
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", self.blob_url):
            raise ConfigError(
                f"blob_url must be an fsspec URL such as file://./.openma/blobs, got {self.blob_url!r}",
                field="blob_url",
            )

    def backend_for(self, store: str) -> str:
        """The backend name that holds ``store``."""
        if store not in STORE_NAMES:
            raise ConfigError(f"unknown store {store!r}; valid stores: {', '.join(STORE_NAMES)}")
        return self.store_backends.get(store, self.store_backends[DEFAULT_KEY])

    def __repr__(self) -> str:
        shown = []
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            if value == default:
                continue
            if not field.repr:
                value = "***" if value else value
            elif isinstance(value, str) and "://" in value:  # postgres_url, blob_url, endpoints
                value = _mask_url(value)
            shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from environment variables (``os.environ`` by default); ``overrides`` win.

        ``DATABASE_URL`` is read only when no Postgres URL is given otherwise and a store is placed on ``pg``
        (it often belongs to the host application and may name another database engine). A bad value is a
        :class:`~openma.errors.ConfigError` whose message starts with the variable it came from.
        """
        env = os.environ if environ is None else environ
        if not isinstance(env, Mapping):
            raise ConfigError(f"environ must be a mapping of variable names to strings, got {describe(env)}")
        _check_fields(overrides)
        kwargs: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, (var, kind) in _ENV.items():
            raw = env.get(var)
            if raw is None or raw == "" or name in overrides:
                continue
            if not isinstance(raw, str):
                raise ConfigError(
                    f"{var} must be a string (the environment holds text), got {describe(raw)}", variable=var
                )
            kwargs[name] = _convert(var, raw, kind)
            sources[name] = var
        database_url = env.get("DATABASE_URL")
        if database_url and "postgres_url" not in kwargs and "postgres_url" not in overrides:
            try:
                placed = _parse_store_backends(overrides.get("store_backends", kwargs.get("store_backends", {})))
            except ConfigError:
                placed = {}  # reported, with its variable, by the constructor below
            if "pg" in placed.values():
                kwargs["postgres_url"] = database_url
                sources["postgres_url"] = "DATABASE_URL"
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            source = sources.get(exc.details.get("field", ""))
            if source is None or exc.message.startswith(source):
                raise
            raise ConfigError(f"{source}: {exc.message}", **{**exc.details, "variable": source}) from None

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Settings:
        """Settings whose every store lives in the one database ``url`` names; ``overrides`` set the rest.

        ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the SQLAlchemy spelling) puts
        every store on the "cf" backend in that file; ``postgresql://user:pass@host/db`` (also
        ``postgres://``, ``postgresql+psycopg://``, ``postgresql+asyncpg://``) puts them on "pg". The other
        settings keep their defaults (the environment is not read; use :meth:`from_env` for that).
        """
        if not isinstance(url, str):
            raise ConfigError(f"the database URL must be a string, got {describe(url)}", field="url")
        _check_fields(overrides)
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        kwargs: dict[str, Any]
        if scheme == "sqlite":
            try:
                parts = urlsplit(url)
            except ValueError:
                parts = urlsplit("sqlite://invalid/")  # reported just below
            if parts.netloc or parts.query or parts.fragment or not parts.path.strip("/"):
                raise ConfigError(
                    "a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db "
                    f"(no host, no query), got {url!r}",
                    field="url",
                )
            kwargs = {"sqlite_path": unquote(parts.path[1:]), "store_backends": {DEFAULT_KEY: "cf"}}
        elif _PG_SCHEME.match(url):
            kwargs = {"postgres_url": url, "store_backends": {DEFAULT_KEY: "pg"}}
        else:
            shown = f"{scheme}://" if scheme else "a value without a scheme"
            raise ConfigError(
                f"unsupported database URL ({shown}); use sqlite:///path.db or postgresql://user:pass@host/db",
                field="url",
                choices=["sqlite", "postgresql"],
            )
        return cls(**{**kwargs, **overrides})


def _check_fields(overrides: Mapping[str, Any]) -> None:
    fields = attrs.fields_dict(Settings)
    unknown = sorted(name for name in overrides if name not in fields)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(fields)}")


_ENV: Final[dict[str, tuple[str, str]]] = {
    "sqlite_path": ("OPENMA_SQLITE_PATH", "str"),
    "postgres_url": ("OPENMA_POSTGRES_URL", "str"),
    "store_backends": ("STORE_BACKENDS", "raw"),
    "blob_url": ("OPENMA_BLOB_URL", "str"),
    "root_secret": ("OPENMA_ROOT_SECRET", "str"),
    "per_tenant_db_enabled": ("PER_TENANT_DB_ENABLED", "bool"),
    "sandbox": ("OPENMA_SANDBOX", "str"),
    "event_spill_bytes": ("OPENMA_EVENT_SPILL_BYTES", "int"),
    "auto_migrate": ("OPENMA_AUTO_MIGRATE", "bool"),
    "sqlite_busy_timeout_ms": ("OPENMA_SQLITE_BUSY_TIMEOUT_MS", "int"),
    "sqlite_lock_timeout": ("OPENMA_SQLITE_LOCK_TIMEOUT", "float"),
    "sqlite_readers": ("OPENMA_SQLITE_READERS", "int"),
    "sqlite_poll_interval": ("OPENMA_SQLITE_POLL_INTERVAL", "float"),
    "pg_pool_min_size": ("OPENMA_PG_POOL_MIN_SIZE", "int"),
    "pg_pool_max_size": ("OPENMA_PG_POOL_MAX_SIZE", "int"),
    "pg_connect_timeout": ("OPENMA_PG_CONNECT_TIMEOUT", "float"),
    "pg_statement_timeout_ms": ("OPENMA_PG_STATEMENT_TIMEOUT_MS", "int"),
    "pg_application_name": ("OPENMA_PG_APPLICATION_NAME", "str"),
    "pg_prepared_statements": ("OPENMA_PG_PREPARED_STATEMENTS", "bool"),
    "s3_endpoint_url": ("OPENMA_S3_ENDPOINT_URL", "str"),
    "s3_region": ("OPENMA_S3_REGION", "str"),
    "s3_access_key_id": ("OPENMA_S3_ACCESS_KEY_ID", "str"),
    "s3_secret_access_key": ("OPENMA_S3_SECRET_ACCESS_KEY", "str"),
    "blob_options": ("OPENMA_BLOB_OPTIONS", "json"),
    "e2b_api_key": ("E2B_API_KEY", "str"),
    "e2b_domain": ("E2B_DOMAIN", "str"),
    "e2b_api_url": ("E2B_API_URL", "str"),
    "e2b_sandbox_url": ("E2B_SANDBOX_URL", "str"),
    "e2b_template": ("E2B_TEMPLATE", "str"),
    "daytona_api_key": ("DAYTONA_API_KEY", "str"),
    "daytona_api_url": ("DAYTONA_API_URL", "str"),
    "daytona_target": ("DAYTONA_TARGET", "str"),
    "daytona_image": ("DAYTONA_IMAGE", "str"),
    "daytona_cpu": ("DAYTONA_CPU", "int"),
    "daytona_memory": ("DAYTONA_MEMORY", "int"),
    "daytona_disk": ("DAYTONA_DISK", "int"),
    "sandbox_keepalive_interval": ("OPENMA_SANDBOX_KEEPALIVE_INTERVAL", "float"),
    "sandbox_idle_reap_after": ("OPENMA_SANDBOX_IDLE_REAP_AFTER", "float"),
    "local_sandbox_root": ("OPENMA_LOCAL_SANDBOX_ROOT", "str"),
    "local_sandbox_output_bytes": ("OPENMA_LOCAL_SANDBOX_OUTPUT_BYTES", "int"),
    "local_sandbox_memory_bytes": ("OPENMA_LOCAL_SANDBOX_MEMORY_BYTES", "int"),
    "local_sandbox_cpu_seconds": ("OPENMA_LOCAL_SANDBOX_CPU_SECONDS", "int"),
    "local_sandbox_open_files": ("OPENMA_LOCAL_SANDBOX_OPEN_FILES", "int"),
    "local_sandbox_processes": ("OPENMA_LOCAL_SANDBOX_PROCESSES", "int"),
    "local_sandbox_kill_grace": ("OPENMA_LOCAL_SANDBOX_KILL_GRACE", "float"),
    "local_sandbox_pass_env": ("OPENMA_LOCAL_SANDBOX_PASS_ENV", "raw"),
}

_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}
_INT_TEXT: Final = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT_TEXT: Final = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def _convert(var: str, raw: str, kind: str) -> Any:
    if kind in ("str", "raw"):
        return raw
    if kind == "bool":
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{var} must be one of {sorted(_TRUE | _FALSE)}, got {raw!r}", variable=var)
    if kind == "int":
        if not _INT_TEXT.match(raw) or len(raw) > 4000:
            raise ConfigError(f"{var} must be an integer, got {raw[:40]!r}", variable=var)
        return int(raw)
    if kind == "float":
        if not _FLOAT_TEXT.match(raw) or len(raw) > 40:  # no nan, inf, or 1_000 spellings
            raise ConfigError(f"{var} must be a finite number such as 2.5, got {raw[:40]!r}", variable=var)
        return float(raw)
    if kind == "json":
        value = load_json(raw, var)
        if not isinstance(value, dict):
            raise ConfigError(f"{var} must be a JSON object", variable=var)
        return value
    raise AssertionError(kind)
