"""Every knob of openma: one frozen ``attrs`` class composing one configuration per part, validated once.

``Settings()`` is the embedded default (SQLite and files under ``./.openma``, the local sandbox).
``Settings.from_env()`` reads the environment variables listed in ``docs/configuration.md``;
``Settings.from_url()`` builds settings from one database URL. A bad value is a
:class:`~openma.errors.ConfigError` that names the variable (or field) and what is valid; nothing is silently
replaced by a default, and no other exception escapes ``Settings(...)``: every field is checked for its type
(a bool is not an int, an int is not a str, a float is not an int) and its range (no NaN, no infinity).

Each part has its own class in :mod:`openma.config` (``settings.sqlite``, ``settings.postgres``,
``settings.blobs``, ``settings.local_sandbox``, ``settings.e2b``, ``settings.daytona``, ``settings.upkeep``,
``settings.models``);
every field of a part also has its flat name, read and written the same way as ever:
``Settings(sqlite_path="x.db").sqlite_path == settings.sqlite.path``, ``attrs.evolve(s, pg_pool_max_size=3)``.
The variables ``from_env`` reads come from the fields' metadata (:func:`openma.config.setting`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar, overload
from urllib.parse import unquote, urlsplit

import attrs

from openma import registry
from openma._validators import boolean, describe, integer_in, load_json, string
from openma.config import (
    LOCAL_SANDBOX_PASS_ENV,
    PARTS,
    PG_SCHEME,
    BlobConfig,
    BubblewrapConfig,
    DaytonaConfig,
    E2BConfig,
    EgressConfig,
    LocalSandboxConfig,
    ModelConfig,
    PostgresConfig,
    SQLiteConfig,
    UpkeepConfig,
    setting,
)
from openma.config._field import MAX_SECONDS, default_of, secret_list, telemetry_sinks
from openma.core.events import MAX_EVENT_BYTES
from openma.errors import ConfigError
from openma.redact import MASK, mask_url, redact_secrets

__all__ = ["DEFAULT_KEY", "LOCAL_SANDBOX_PASS_ENV", "MAX_SECONDS", "STORE_NAMES", "Settings", "redact_secrets"]

#: The stores whose backend can be chosen one by one in ``STORE_BACKENDS`` (each new store adds its name).
STORE_NAMES: Final = ("tenants", "agents", "environments", "sessions", "kv", "vaults", "usage", "telemetry")
DEFAULT_KEY: Final = "default"
T = TypeVar("T")


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


def _root_secret_from_env() -> str | None:
    """``OPENMA_ROOT_SECRET`` when it is set: a secret belongs in the environment, not in code."""
    return os.environ.get("OPENMA_ROOT_SECRET") or None


class _Flat(Generic[T]):
    """The flat name of a part's field: ``settings.sqlite_path`` reads ``settings.sqlite.path``."""

    def __init__(self, part: str, field: str) -> None:
        self.part, self.field = part, field

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> _Flat[T]: ...
    @overload
    def __get__(self, obj: object, owner: type[Any] | None = None) -> T: ...
    def __get__(self, obj: object, owner: type[Any] | None = None) -> T | _Flat[T]:
        if obj is None:
            return self
        value: T = getattr(getattr(obj, self.part), self.field)
        return value


_UNSET: Final[Any] = object()


@attrs.frozen(repr=False, init=False)
class Settings:
    """Configuration of a :class:`~openma.Platform`. Immutable; use :func:`attrs.evolve` to vary it.

    ``Settings(**fields)`` takes the fields below, the parts (``sqlite=SQLiteConfig(...)``) and the flat name
    of any part's field (``sqlite_path=...``, which wins over the same field of a part given alongside).
    Every field is validated (and so by ``attrs.evolve``): a value of the wrong type or out of range is a
    :class:`~openma.errors.ConfigError` whose ``details["field"]`` names the field by its flat name.
    """

    store_backends: dict[str, str] = setting(  # noqa: RUF009 (an attrs field: setting() returns attrs.field)
        "store_backends",
        "STORE_BACKENDS",
        "JSON object: store name → backend name. `default` covers the stores not named.",
        factory=lambda: {DEFAULT_KEY: "cf"},
        converter=_parse_store_backends,
        kind="raw",
        shown='`{"default":"cf"}`',
    )
    sandbox: str = setting(
        "sandbox",
        "OPENMA_SANDBOX",
        "Sandbox provider: `local`, `e2b`, `daytona`, or a name registered under `openma.sandboxes`.",
        default="local",
        validator=string(),
    )
    event_spill_bytes: int = setting(
        "event_spill_bytes",
        "OPENMA_EVENT_SPILL_BYTES",
        "Events whose JSON is larger than this many bytes go to the blob store; 1 to 67108864 (the event size "
        "cap, `openma.core.events.MAX_EVENT_BYTES`).",
        default=500_000,
        validator=integer_in(1, MAX_EVENT_BYTES),
        kind="int",
    )
    auto_migrate: bool = setting(
        "auto_migrate",
        "OPENMA_AUTO_MIGRATE",
        "Apply pending migrations when a platform opens. Turn off to migrate from a deploy step "
        "(`python -m openma migrate`).",
        default=True,
        validator=boolean,
        kind="bool",
    )
    root_secret: str | None = setting(
        "root_secret",
        "OPENMA_ROOT_SECRET",
        "The root secret the keys of vault credentials and session secrets are derived from (HKDF-SHA256, "
        "one key per purpose; at least 16 characters). Unset: the embedded default keeps a generated one in "
        "`root_secret.key` (mode 0600) next to the SQLite file; vaults or sessions on another backend need it "
        "set (else `ConfigError`). Never printed. See docs/secrets.md. Like a provider SDK's API key, "
        "`Settings(...)` takes it from the environment when it is not given.",
        factory=_root_secret_from_env,
        validator=string(optional=True),
        secret=True,
    )
    root_secret_previous: tuple[str, ...] = setting(
        "root_secret_previous",
        "OPENMA_ROOT_SECRET_PREVIOUS",
        "Comma-separated retired root secrets that still decrypt (until `python -m openma keys rotate` has "
        "re-encrypted everything under the current one). Never printed.",
        default=(),
        converter=secret_list,
        kind="raw",
        secret=True,
    )
    per_tenant_db_enabled: bool = setting(
        "per_tenant_db_enabled",
        "PER_TENANT_DB_ENABLED",
        "Reserved for per-tenant database isolation, which is not supported yet: `true` is a `ConfigError`.",
        default=False,
        validator=boolean,
        kind="bool",
    )
    telemetry_sinks: tuple[str, ...] = setting(
        "telemetry_sinks",
        "OPENMA_TELEMETRY",
        "Comma-separated telemetry sinks of a platform opened without `telemetry=`: `log` (JSON lines on the "
        "`openma.telemetry` logger), `sql` (the `telemetry_events` table of the backend holding the `telemetry` "
        "store), `otel` (OpenTelemetry traces and metrics; the `otel` extra), or `none`. See docs/telemetry.md.",
        default=("log",),
        converter=telemetry_sinks,
        kind="raw",
        shown="`log`",
    )
    sqlite: SQLiteConfig = attrs.field(factory=SQLiteConfig)
    postgres: PostgresConfig = attrs.field(factory=PostgresConfig)
    blobs: BlobConfig = attrs.field(factory=BlobConfig)
    local_sandbox: LocalSandboxConfig = attrs.field(factory=LocalSandboxConfig)
    bubblewrap: BubblewrapConfig = attrs.field(factory=BubblewrapConfig)
    e2b: E2BConfig = attrs.field(factory=E2BConfig)
    daytona: DaytonaConfig = attrs.field(factory=DaytonaConfig)
    upkeep: UpkeepConfig = attrs.field(factory=UpkeepConfig)
    models: ModelConfig = attrs.field(factory=ModelConfig)
    egress: EgressConfig = attrs.field(factory=EgressConfig)

    # -- the flat names (read-only views of the parts' fields; see the module docstring)
    sqlite_path = _Flat[str]("sqlite", "path")
    sqlite_busy_timeout_ms = _Flat[int]("sqlite", "busy_timeout_ms")
    sqlite_lock_timeout = _Flat[float]("sqlite", "lock_timeout")
    sqlite_readers = _Flat[int]("sqlite", "readers")
    sqlite_poll_interval = _Flat[float]("sqlite", "poll_interval")
    postgres_url = _Flat[str | None]("postgres", "url")
    pg_pool_min_size = _Flat[int]("postgres", "pool_min_size")
    pg_pool_max_size = _Flat[int]("postgres", "pool_max_size")
    pg_connect_timeout = _Flat[float]("postgres", "connect_timeout")
    pg_statement_timeout_ms = _Flat[int]("postgres", "statement_timeout_ms")
    pg_application_name = _Flat[str]("postgres", "application_name")
    pg_prepared_statements = _Flat[bool]("postgres", "prepared_statements")
    blob_url = _Flat[str]("blobs", "url")
    s3_endpoint_url = _Flat[str | None]("blobs", "s3_endpoint_url")
    s3_region = _Flat[str | None]("blobs", "s3_region")
    s3_access_key_id = _Flat[str | None]("blobs", "s3_access_key_id")
    s3_secret_access_key = _Flat[str | None]("blobs", "s3_secret_access_key")
    blob_options = _Flat[dict[str, Any]]("blobs", "options")
    local_sandbox_root = _Flat[str]("local_sandbox", "root")
    local_sandbox_output_bytes = _Flat[int]("local_sandbox", "output_bytes")
    local_sandbox_memory_bytes = _Flat[int]("local_sandbox", "memory_bytes")
    local_sandbox_cpu_seconds = _Flat[int]("local_sandbox", "cpu_seconds")
    local_sandbox_open_files = _Flat[int]("local_sandbox", "open_files")
    local_sandbox_processes = _Flat[int]("local_sandbox", "processes")
    local_sandbox_kill_grace = _Flat[float]("local_sandbox", "kill_grace")
    local_sandbox_pass_env = _Flat[tuple[str, ...]]("local_sandbox", "pass_env")
    bubblewrap_uid = _Flat[int]("bubblewrap", "uid")
    bubblewrap_gid = _Flat[int]("bubblewrap", "gid")
    bubblewrap_rootfs = _Flat[str | None]("bubblewrap", "rootfs")
    bubblewrap_ro_binds = _Flat[tuple[str, ...]]("bubblewrap", "ro_binds")
    e2b_api_key = _Flat[str | None]("e2b", "api_key")
    e2b_domain = _Flat[str | None]("e2b", "domain")
    e2b_api_url = _Flat[str | None]("e2b", "api_url")
    e2b_sandbox_url = _Flat[str | None]("e2b", "sandbox_url")
    e2b_template = _Flat[str | None]("e2b", "template")
    daytona_api_key = _Flat[str | None]("daytona", "api_key")
    daytona_api_url = _Flat[str | None]("daytona", "api_url")
    daytona_target = _Flat[str | None]("daytona", "target")
    daytona_image = _Flat[str | None]("daytona", "image")
    daytona_cpu = _Flat[int | None]("daytona", "cpu")
    daytona_memory = _Flat[int | None]("daytona", "memory")
    daytona_disk = _Flat[int | None]("daytona", "disk")
    sandbox_keepalive_interval = _Flat[float]("upkeep", "keepalive_interval")
    sandbox_idle_reap_after = _Flat[float]("upkeep", "idle_reap_after")
    model = _Flat[str | None]("models", "default")
    model_stall_timeout = _Flat[float]("models", "stall_timeout")
    anthropic_api_key = _Flat[str | None]("models", "anthropic_api_key")
    anthropic_base_url = _Flat[str | None]("models", "anthropic_base_url")
    openai_api_key = _Flat[str | None]("models", "openai_api_key")
    openai_base_url = _Flat[str | None]("models", "openai_base_url")
    egress_mode = _Flat[str]("egress", "mode")
    egress_upstream_ca = _Flat[str | None]("egress", "upstream_ca")
    egress_listen_host = _Flat[str]("egress", "listen_host")
    egress_listen_port = _Flat[int]("egress", "listen_port")
    egress_advertise_host = _Flat[str | None]("egress", "advertise_host")
    egress_advertise_port = _Flat[int | None]("egress", "advertise_port")
    egress_passthrough = _Flat[bool]("egress", "passthrough")

    def __init__(self, **fields: Any) -> None:
        parts: dict[str, Any] = {}
        for part, cls in PARTS.items():
            given = fields.pop(part, _UNSET)
            flat = {short: fields.pop(name) for name, (p, short) in _FLAT.items() if p == part and name in fields}
            if given is _UNSET:
                parts[part] = cls(**flat)
            elif not isinstance(given, cls):  # a part is an instance of its class
                raise ConfigError(f"{part} must be a {cls.__name__}, got {describe(given)}", field=part)
            else:
                parts[part] = attrs.evolve(given, **flat)
        known = {a.name for a in attrs.fields(type(self))}
        unknown = sorted(name for name in fields if name not in known)
        if unknown:
            hints = {name: difflib.get_close_matches(name, [*known, *_FLAT], n=1) for name in unknown}
            said = ", ".join(
                f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for name, hint in hints.items()
            )
            raise ConfigError(f"Settings got unknown field(s): {said}", field=unknown[0])
        self.__attrs_init__(**fields, **parts)

    def __attrs_post_init__(self) -> None:
        if self.per_tenant_db_enabled:
            raise ConfigError(
                "per_tenant_db_enabled is not supported yet (reserved for per-tenant database isolation); "
                "leave PER_TENANT_DB_ENABLED unset or false",
                field="per_tenant_db_enabled",
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

    def backend_for(self, store: str) -> str:
        """The backend name that holds ``store``."""
        if store not in STORE_NAMES:
            raise ConfigError(f"unknown store {store!r}; valid stores: {', '.join(STORE_NAMES)}")
        return self.store_backends.get(store, self.store_backends[DEFAULT_KEY])

    def __repr__(self) -> str:
        shown = []
        for field in SETTINGS_FIELDS:
            value = getattr(self, field.name)
            if value == default_of(field):
                continue
            if field.metadata["secret"]:
                value = MASK if value else value
            elif isinstance(value, str) and "://" in value:  # postgres_url, blob_url, endpoints
                value = mask_url(value)
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
            if raw is None or raw == "" or name in overrides or _FLAT.get(name, ("",))[0] in overrides:
                continue
            if not isinstance(raw, str):
                raise ConfigError(
                    f"{var} must be a string (the environment holds text), got {describe(raw)}", variable=var
                )
            kwargs[name] = _convert(var, raw, kind)
            sources[name] = var
        database_url = env.get("DATABASE_URL")
        if database_url and "postgres_url" not in kwargs and not {"postgres_url", "postgres"} & set(overrides):
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
        elif PG_SCHEME.match(url):
            kwargs = {"postgres_url": url, "store_backends": {DEFAULT_KEY: "pg"}}
        else:
            shown = f"{scheme}://" if scheme else "a value without a scheme"
            raise ConfigError(
                f"unsupported database URL ({shown}); use sqlite:///path.db or postgresql://user:pass@host/db",
                field="url",
                choices=["sqlite", "postgresql"],
            )
        return cls(**{**kwargs, **overrides})


_ALL_PARTS: Final[tuple[tuple[str | None, type[Any]], ...]] = ((None, Settings), *PARTS.items())
#: Every setting by its flat name: the fields of ``Settings`` itself, then those of each part, each renamed
#: to its flat name (``metadata["part"]`` is the part holding it, ``None`` for the fields of ``Settings``).
SETTINGS_FIELDS: Final[tuple[attrs.Attribute[Any], ...]] = tuple(
    field.evolve(name=field.metadata["setting"], metadata={**field.metadata, "part": part})
    for part, cls in _ALL_PARTS
    for field in attrs.fields(cls)
    if "setting" in field.metadata
)
#: Flat name → (part, field name in the part), for the fields of the parts.
_FLAT: Final[dict[str, tuple[str, str]]] = {
    field.metadata["setting"]: (part, field.name) for part, cls in PARTS.items() for field in attrs.fields(cls)
}
#: Flat name → (environment variable, kind of text), from the fields' metadata.
_ENV: Final[dict[str, tuple[str, str]]] = {f.name: (f.metadata["env"], f.metadata["kind"]) for f in SETTINGS_FIELDS}


def _check_fields(overrides: Mapping[str, Any]) -> None:
    valid = [*attrs.fields_dict(Settings), *_FLAT]
    unknown = sorted(name for name in overrides if name not in valid)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(valid)}")


_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}
#: ASCII only: ``int()`` / ``float()`` take fewer spaces (``\x1f``) than Unicode ``\s`` matches.
_INT_TEXT: Final = re.compile(r"^\s*[+-]?\d+\s*$", re.ASCII)
_FLOAT_TEXT: Final = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$", re.ASCII)


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
