"""Opening Postgres connections for the "pg" engine: the driver, the conninfo, the SQL dialect, the idle check.

* The driver is imported when a client opens (:func:`load_driver`), not when this module is imported.
* :func:`translate` turns portable SQL (``?`` placeholders) into psycopg's (``%s``), once per distinct text.
* :func:`idle_socket_has_news` is the check of a pooled connection before it is handed out: one
  non-blocking ``poll(2)`` of its socket (never ``select(2)``, which cannot watch a descriptor numbered 1024
  or more).
* :func:`driver_reason` is the text of a driver error with its connection secrets masked.
* :func:`in_pipeline` runs work in pipeline mode and raises the pipeline's first error (psycopg logs none).
* :func:`param_adapters` is how parameters go out: psycopg's defaults, but a ``list`` (a Postgres array, as
  the engine's batch append sends) in binary: a text array escapes every quote and backslash of every
  element, and a JSON document is full of quotes (for a batch of 100 events of 1 KB the text form took about
  four times the client time of the binary one).
"""

from __future__ import annotations

import functools
import math
import re
import select
import selectors
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import anyio
import sniffio

from openma.errors import ConfigError
from openma.redact import mask_url, redact_secrets
from openma.settings import Settings

if TYPE_CHECKING:
    from psycopg import AsyncConnection, AsyncCursor

    from openma.ports.sql import Params, Row, Statement

    Conn = AsyncConnection[Row]

INSTALL_HINT: Final = "pip install 'openma[pg]'"
UNIQUE_VIOLATION: Final = "23505"

# libpq transaction states (psycopg.pq.TransactionStatus), kept here so this module imports without psycopg.
TX_IDLE: Final = 0
TX_ACTIVE: Final = 1
TX_INTRANS: Final = 2
TX_INERROR: Final = 3
TX_UNKNOWN: Final = 4

# A quoted literal, quoted identifier, comment or dollar-quoted string (left as they are, but for '%'), a '?'
# placeholder, or a bare '%'.
_TOKENS: Final = re.compile(
    r"""
      (?<![A-Za-z0-9_])[Ee]'(?:[^'\\]|\\.|'')*'
    | '(?:[^']|'')*'
    | "(?:[^"]|"")*"
    | --[^\n]*
    | /\*.*?\*/
    | \$([A-Za-z_][A-Za-z_0-9]*|)\$.*?\$\1\$
    | \?
    | %
    """,
    re.S | re.X,
)
#: Statements with more parameters than this (batches: an ``IN`` list or ``VALUES`` row per item) are never
#: prepared. Their text differs with every batch size anyway, and Postgres soon settles a prepared statement on
#: a generic plan costed while the table was small: for the append's dedup check (``event_id IN (...)``) that
#: plan scanned the session's events, and batches of 100 slowed down about 3x within 9 000 events of one
#: session. Unprepared, each batch is planned for its own values and stays flat.
PREPARE_MAX_PARAMS: Final = 32
_KEEPALIVES: Final = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _token(match: re.Match[str]) -> str:
    text = match.group(0)
    if text == "?":
        return "%s"
    return text.replace("%", "%%")


@functools.lru_cache(maxsize=4096)
def translate(text: str) -> str:
    """Portable SQL → psycopg: ``?`` outside literals and comments → ``%s``; every ``%`` → ``%%``."""
    return _TOKENS.sub(_token, text)


class PostgresDialect:
    name: Final = "postgres"

    def sql(self, text: str) -> str:
        return translate(text)

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == UNIQUE_VIOLATION

    def json_drop_keys(self, obj: str) -> str:
        # ``json`` (not ``jsonb``) keeps each member's stored text, so the result stays compact.
        return (
            "(SELECT COALESCE('{' || string_agg(to_json(m.key)::text || ':' || m.value::text, ',') || '}', '{}')"
            f" FROM json_each(({obj})::json) AS m WHERE m.key NOT IN (SELECT json_array_elements_text(?::json)))"
        )

    def json_key_count(self, obj: str) -> str:
        return f"(SELECT count(*) FROM json_object_keys(({obj})::json))"

    def byte_length(self, text: str) -> str:
        return f"octet_length({text})"

    def __repr__(self) -> str:
        return "PostgresDialect()"


async def in_pipeline(conn: Conn, work: Callable[[], Awaitable[object]]) -> None:
    """Run ``work`` in pipeline mode; raise the first error of the pipeline, without psycopg logging another.

    An error raised inside psycopg's pipeline block makes it log "error ignored terminating ... pipeline
    aborted" on leaving it; so the error is kept, the block ends normally (leaving it raises that error again,
    or "pipeline aborted") and the first one is raised.
    """
    failure: Exception | None = None
    try:
        async with conn.pipeline():
            try:
                await work()
            except Exception as exc:
                failure = exc
    except Exception as exc:
        raise (failure or exc) from None
    if failure is not None:
        raise failure


def prepare_flag(params: Params) -> bool | None:
    """psycopg's ``prepare=`` for ``params``: its default (prepare after a few runs), or never for a batch."""
    return None if len(params) <= PREPARE_MAX_PARAMS else False


async def send_segment(
    conn: Conn, segment: Sequence[Statement], cursors: list[AsyncCursor[Row]], *, begin: bool, commit: bool
) -> None:
    """Queue one segment of a write unit on a connection in pipeline mode (its cursors go to ``cursors``)."""
    if begin:
        await conn.execute(b"BEGIN", ())
    for st in segment:
        cursors.append(await conn.execute(translate(st.sql), st.params, prepare=prepare_flag(st.params)))
    if commit:
        await conn.execute(b"COMMIT", ())


def load_driver() -> tuple[ModuleType, ModuleType]:
    """``(psycopg, psycopg_pool)``, or a ``ConfigError`` naming the extra to install."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise ConfigError(
            f"the Postgres store backend 'pg' needs psycopg 3 and psycopg-pool ({exc}); install them with: "
            f"{INSTALL_HINT}",
            extra="pg",
        ) from exc
    return psycopg, psycopg_pool


def param_adapters(psycopg: ModuleType) -> Any:
    """psycopg's adapters with ``list`` dumped in binary (the ``context`` of every pooled connection)."""
    from psycopg.adapt import AdaptersMap
    from psycopg.types.array import ListBinaryDumper

    out = AdaptersMap(psycopg.adapters)
    out.register_dumper(list, ListBinaryDumper)  # registered last: what a ``%s`` list parameter uses
    return out


def require_asyncio() -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library != "asyncio":
        raise ConfigError(
            f"the Postgres store backend 'pg' runs on asyncio only (psycopg's async driver needs an asyncio "
            f"event loop), but this is running on {library or 'no event loop'}; run openma on asyncio "
            "(anyio.run(main, backend='asyncio')) or keep these stores on 'cf'",
            async_library=library,
        )


_SHIELD: list[type[anyio.CancelScope]] = []


def shield() -> anyio.CancelScope:
    """``anyio.CancelScope(shield=True)``, built from the running backend's class directly.

    ``anyio.CancelScope(...)`` looks the async library up on every call (about half its cost); the engine
    runs on asyncio only (:func:`require_asyncio`), so the class is found once and kept.
    """
    if not _SHIELD:
        _SHIELD.append(type(anyio.CancelScope()))
    return _SHIELD[0](shield=True)


def idle_socket_has_news(conn: Conn) -> bool:
    """True when an idle pooled connection is closed or the server sent something since it was last used.

    Nothing is expected on an idle autocommit connection (the pool never LISTENs), so readable data means a
    ``FATAL`` message (terminated backend, server shutdown) or EOF: the connection is not worth using.
    """
    pgconn = conn.pgconn
    if pgconn.status != 0 or pgconn.transaction_status != TX_IDLE:  # 0 = CONNECTION_OK
        return True
    try:
        return _readable(pgconn.socket)
    except Exception:  # OSError, or psycopg.OperationalError when the socket is gone
        return True


#: The wait kinds of :func:`ready_now`: psycopg's ``Wait.R`` / ``Wait.W`` (and ``Ready``) values.
READ: Final = 1
WRITE: Final = 2
#: One ``poll`` object per descriptor number and wait kind, kept: the check of a pooled connection runs on every
#: call, and a pooled connection's waits on every chunk it receives (``pg_wait.py``). A poll object only names
#: the number, so a number closed and reused by another socket is polled right.
_POLLERS: dict[tuple[int, int], Any] = {}


def ready_now(fd: int, wanted: int) -> int:
    """What of ``wanted`` (:data:`READ` / :data:`WRITE` bits) ``fd`` is ready for right now: a zero-timeout
    ``poll(2)``, for any descriptor number (needs ``select.poll``).

    An error or a hang-up counts as ready, so the driver reads it.
    """
    poller = _POLLERS.get((fd, wanted))
    if poller is None:
        poller = _POLLERS[fd, wanted] = select.poll()
        poller.register(fd, (select.POLLIN if wanted & READ else 0) | (select.POLLOUT if wanted & WRITE else 0))
    ready = 0
    for _, event in poller.poll(0):
        if event & (select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLNVAL):
            ready |= READ & wanted
        if event & (select.POLLOUT | select.POLLERR | select.POLLHUP | select.POLLNVAL):
            ready |= WRITE & wanted
    return ready


def _readable(fd: int) -> bool:
    """Whether ``fd`` has data (or EOF, or an error) waiting, without blocking; any descriptor number."""
    if hasattr(select, "poll"):
        return bool(ready_now(fd, READ))
    with selectors.DefaultSelector() as selector:  # pragma: no cover - platforms without poll(2)
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(0))


def driver_reason(exc: BaseException, *conninfos: str | None) -> tuple[str, BaseException | None]:
    """A driver error's text with connection secrets masked, and the error to chain (``None`` if it had any)."""
    text = str(exc).strip() or type(exc).__name__
    masked = redact_secrets(text, *conninfos)
    return masked, (exc if masked == text else None)


def connection_params(url: str, settings: Settings, psycopg: ModuleType) -> str:
    """The conninfo for ``url`` with openma's settings added where the URL does not set them."""
    try:
        params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason, _ = driver_reason(exc, url)
        raise ConfigError(f"postgres_url {mask_url(url)!r} is not a valid connection URL: {reason}") from None
    params.setdefault("application_name", settings.pg_application_name)
    # libpq takes whole seconds and treats values below 2 as 2.
    params.setdefault("connect_timeout", max(2, math.ceil(settings.pg_connect_timeout)))
    # TCP keepalives, so a call on a connection to a host that vanished fails instead of waiting forever.
    for key, value in _KEEPALIVES.items():
        params.setdefault(key, value)
    if settings.pg_statement_timeout_ms:
        option = f"-c statement_timeout={int(settings.pg_statement_timeout_ms)}"
        params["options"] = f"{params['options']} {option}" if params.get("options") else option
    conninfo: str = psycopg.conninfo.make_conninfo("", **params)
    return conninfo
