"""The "pg" engine: Postgres through psycopg 3 and a ``psycopg_pool.AsyncConnectionPool``.

* The driver is imported when a client opens, not when this module is imported: without the ``pg`` extra,
  choosing "pg" is a :class:`~openma.errors.ConfigError` that says ``pip install 'openma[pg]'``.
* Pooled connections are in autocommit mode and return rows as dicts. Portable SQL (``?`` placeholders) is
  translated once per distinct text by :class:`PostgresDialect` and cached.
* A write unit (:meth:`PostgresClient.run_batch`) is one transaction sent in as few round trips as the unit
  allows: ``BEGIN``, the statements and ``COMMIT`` go out together in pipeline mode, so a unit without an
  ``expect_rows`` check costs one round trip. A unit with checks is cut after each checked statement (one more
  round trip per check); a single statement runs alone, in autocommit, which is already atomic.
* Every connection taken from the pool is first checked for a message the server sent while it sat idle (a
  terminated backend or a shut-down server announces itself that way); such a connection is discarded and
  another one taken, so the first call after a restart or a ``pg_terminate_backend`` does not fail. The check
  is one non-blocking ``poll`` of the socket, not a round trip.
* A lost connection, an unreachable server, a statement timeout or no free connection within
  ``pg_connect_timeout`` is :class:`~openma.errors.StorageUnavailable`. The transaction of the failing call
  is rolled back by the server (a dead connection never commits), so nothing partial is written. As with any
  client-server database, a connection lost while ``COMMIT`` itself is in flight leaves that one unit in doubt;
  so does a caller cancelled after its unit went out (it commits whole or not at all, as a cancelled unit on
  SQLite finishes in its thread).
* ``transaction(write=True)`` is a READ COMMITTED transaction: unlike SQLite's ``BEGIN IMMEDIATE`` it does not
  serialize writers, so a read-then-write inside it must fold its check into the write (a conditional
  ``UPDATE``), as every store of the family does. ``write=False`` is a ``REPEATABLE READ READ ONLY``
  snapshot, like a SQLite read transaction.
* ``migration_lock()`` holds ``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)`` for its transaction, so concurrent
  starters apply each migration once.
* psycopg's async driver runs on asyncio only; opening the engine under trio is a ``ConfigError``.
"""

from __future__ import annotations

import functools
import math
import re
import select
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import anyio
import sniffio

from openma.adapters.sql.backend import SqlStoreBackend
from openma.errors import ConfigError, StorageUnavailable
from openma.ports.sql import BatchResult, Params, Row, SqlTransaction, Statement
from openma.settings import Settings, _mask_url

if TYPE_CHECKING:
    from psycopg import AsyncConnection, AsyncCursor
    from psycopg_pool import AsyncConnectionPool

    Conn = AsyncConnection[Row]

INSTALL_HINT: Final = "pip install 'openma[pg]'"
#: The advisory lock that serializes migrators on one database (``b"openma.m"`` as a signed 64-bit integer).
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"openma.m", "big", signed=True)
UNIQUE_VIOLATION: Final = "23505"

# libpq transaction states (psycopg.pq.TransactionStatus), kept here so this module imports without psycopg.
_IDLE: Final = 0
_ACTIVE: Final = 1
_UNKNOWN: Final = 4

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
_KEEPALIVES: Final = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
_CTE: Final = re.compile(r"^\s*WITH\b", re.I)


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


def _require_asyncio() -> None:
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


def _idle_socket_has_news(conn: Conn) -> bool:
    """True when an idle pooled connection is closed or the server sent something since it was last used.

    Nothing is expected on an idle autocommit connection (the pool never LISTENs), so readable data means a
    ``FATAL`` message (terminated backend, server shutdown) or EOF: the connection is not worth using.
    """
    pgconn = conn.pgconn
    if pgconn.status != 0 or pgconn.transaction_status != _IDLE:  # 0 = CONNECTION_OK
        return True
    try:
        readable, _, _ = select.select([pgconn.socket], (), (), 0)
    except Exception:  # OSError, or psycopg.OperationalError when the socket is gone
        return True
    return bool(readable)


def connection_params(url: str, settings: Settings, psycopg: ModuleType) -> str:
    """The conninfo for ``url`` with openma's settings added where the URL does not set them."""
    try:
        params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"postgres_url {_mask_url(url)!r} is not a valid connection URL: {exc}") from None
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


class PostgresTransaction:
    """Statements on one pooled connection inside one open transaction."""

    def __init__(self, client: PostgresClient, conn: Conn) -> None:
        self._client = client
        self._conn = conn

    async def _cursor(self, sql: str, params: Params) -> AsyncCursor[Row]:
        try:
            return await self._conn.execute(translate(sql), params)
        except Exception as exc:
            self._client._raise_if_down(exc, self._conn)
            raise

    async def execute(self, sql: str, params: Params = ()) -> int:
        return (await self._cursor(sql, params)).rowcount

    async def executemany(self, sql: str, params: Iterable[Params]) -> int:
        cur = self._conn.cursor()
        try:
            await cur.executemany(translate(sql), list(params))
        except Exception as exc:
            self._client._raise_if_down(exc, self._conn)
            raise
        return cur.rowcount

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        cur = await self._cursor(sql, params)
        return await cur.fetchone()

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        cur = await self._cursor(sql, params)
        return await cur.fetchall()

    async def execute_script(self, script: str) -> None:
        """Run a migration file as it is (no placeholders): one simple-protocol query, several statements."""
        try:
            await self._conn.execute(script.encode())
        except Exception as exc:
            self._client._raise_if_down(exc, self._conn)
            raise


class PostgresClient:
    """The :class:`~openma.ports.sql.SqlClient` on one Postgres database."""

    dialect: Final = PostgresDialect()

    def __init__(self, pool: AsyncConnectionPool[Conn], *, url: str, psycopg: ModuleType, pool_module: ModuleType):
        self._pool = pool
        self._url = _mask_url(url) or ""
        self._down: tuple[type[BaseException], ...] = (psycopg.OperationalError, pool_module.PoolTimeout)
        self._interface_error: type[BaseException] = psycopg.InterfaceError
        self._max_checks = (pool.max_size or 1) + 1
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresClient({self._url!r})"

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        return self._pool

    @classmethod
    async def open(cls, url: str, settings: Settings | None = None) -> PostgresClient:
        """Connect once (so a bad URL or password fails now, with the server's reason), then open the pool."""
        settings = settings or Settings(postgres_url=url)
        _require_asyncio()
        psycopg, pool_module = load_driver()
        from psycopg.rows import dict_row

        conninfo = connection_params(url, settings, psycopg)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "prepare_threshold": 5 if settings.pg_prepared_statements else None,
        }
        masked = _mask_url(url)
        try:
            probe = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"postgres_url {masked!r} is not usable: {str(exc).strip()}") from exc
        except psycopg.Error as exc:
            raise StorageUnavailable(
                f"cannot connect to Postgres at {masked}: {str(exc).strip()}", engine="postgres"
            ) from exc
        await probe.close()
        pool: AsyncConnectionPool[Conn] = pool_module.AsyncConnectionPool(
            conninfo,
            kwargs=kwargs,
            min_size=settings.pg_pool_min_size,
            max_size=settings.pg_pool_max_size,
            timeout=settings.pg_connect_timeout,
            open=False,
            name="openma",
        )
        try:
            await pool.open(wait=True, timeout=settings.pg_connect_timeout)
        except pool_module.PoolTimeout as exc:
            await pool.close()
            raise StorageUnavailable(
                f"the Postgres pool for {masked} could not open {settings.pg_pool_min_size} connections "
                f"within {settings.pg_connect_timeout} s",
                engine="postgres",
            ) from exc
        return cls(pool, url=url, psycopg=psycopg, pool_module=pool_module)

    # -- connections and errors

    def _raise_if_down(self, exc: BaseException, conn: Conn | None) -> None:
        """Raise :class:`StorageUnavailable` from ``exc`` when it means the database could not do the call."""
        down = isinstance(exc, self._down) or (isinstance(exc, self._interface_error) and (conn is None or conn.closed))
        if not down:
            return
        sqlstate = getattr(exc, "sqlstate", None)
        reason = str(exc).strip() or type(exc).__name__
        if sqlstate == "57014":
            reason = f"statement timed out or was cancelled ({reason})"
        raise StorageUnavailable(
            f"Postgres at {self._url} is unavailable: {reason}", engine="postgres", sqlstate=sqlstate
        ) from exc

    async def _get(self) -> Conn:
        """A pooled connection that has not heard from the server while idle (see the module docstring)."""
        if self._closed:
            raise ConfigError("this Postgres client is closed")
        pool = self._pool
        for _ in range(self._max_checks):
            try:
                conn = await pool.getconn()
            except Exception as exc:
                self._raise_if_down(exc, None)
                raise
            if not _idle_socket_has_news(conn):
                return conn
            with anyio.CancelScope(shield=True):
                await conn.close()
                await pool.putconn(conn)  # closed: the pool drops it and opens a replacement
        return conn  # every check failed: let the call itself report what is wrong

    async def _put(self, conn: Conn) -> None:
        """Give ``conn`` back, first ending whatever it was left doing (an open transaction, a cut-off command)."""
        with anyio.CancelScope(shield=True):
            status = conn.pgconn.transaction_status
            if status == _ACTIVE:
                await conn.close()
            elif status not in (_IDLE, _UNKNOWN):
                try:
                    await conn.execute(b"ROLLBACK")
                except Exception:
                    await conn.close()
            await self._pool.putconn(conn)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        conn = await self._get()
        try:
            yield conn
        finally:
            await self._put(conn)

    # -- autocommit calls

    async def execute(self, sql: str, params: Params = ()) -> int:
        conn = await self._get()
        try:
            cur = await conn.execute(translate(sql), params)
            return cur.rowcount
        except Exception as exc:
            self._raise_if_down(exc, conn)
            raise
        finally:
            await self._put(conn)

    async def executemany(self, sql: str, params: Iterable[Params]) -> int:
        async with self.transaction() as tx:
            return await tx.executemany(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        conn = await self._get()
        try:
            cur = await conn.execute(translate(sql), params)
            return await cur.fetchone()
        except Exception as exc:
            self._raise_if_down(exc, conn)
            raise
        finally:
            await self._put(conn)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        conn = await self._get()
        try:
            cur = await conn.execute(translate(sql), params)
            return await cur.fetchall()
        except Exception as exc:
            self._raise_if_down(exc, conn)
            raise
        finally:
            await self._put(conn)

    # -- write units

    async def run_batch(self, statements: Sequence[Statement]) -> BatchResult:
        if not statements:
            return BatchResult([], [])
        conn = await self._get()
        try:
            if len(statements) == 1 and not (statements[0].expect_rows and _CTE.match(statements[0].sql)):
                return await self._single(conn, statements[0])
            return await self._pipelined(conn, statements)
        except Exception as exc:
            self._raise_if_down(exc, conn)
            raise
        finally:
            await self._put(conn)

    async def _single(self, conn: Conn, st: Statement) -> BatchResult:
        """One statement in autocommit is its own transaction; one that changed nothing wrote nothing."""
        cur = await conn.execute(translate(st.sql), st.params)
        got = await cur.fetchall() if st.fetch else []
        count = len(got) if st.fetch else cur.rowcount
        aborted = 0 if st.expect_rows and count == 0 else None
        return BatchResult([count], [got], aborted)

    async def _pipelined(self, conn: Conn, statements: Sequence[Statement]) -> BatchResult:
        """``BEGIN``, statements, ``COMMIT`` in pipeline mode, with a sync after each ``expect_rows`` statement."""
        rowcounts: list[int] = []
        rows: list[list[Row]] = []
        begun = committed = False
        start = 0
        # On any error the connection is left in its transaction; _put rolls it back.
        while start < len(statements):
            end = start
            while end < len(statements) - 1 and not statements[end].expect_rows:
                end += 1
            segment = statements[start : end + 1]
            commit = end == len(statements) - 1 and not statements[end].expect_rows
            async with conn.pipeline():
                if not begun:
                    await conn.execute(b"BEGIN", ())
                    begun = True
                cursors = [await conn.execute(translate(st.sql), st.params) for st in segment]
                if commit:
                    await conn.execute(b"COMMIT", ())
            for st, cur in zip(segment, cursors, strict=True):
                got = await cur.fetchall() if st.fetch else []
                rowcounts.append(len(got) if st.fetch else cur.rowcount)
                rows.append(got)
            if commit:
                committed = True
            elif statements[end].expect_rows and rowcounts[-1] == 0:
                await conn.execute(b"ROLLBACK")
                return BatchResult(rowcounts, rows, aborted_at=end)
            start = end + 1
        if not committed:
            await conn.execute(b"COMMIT")
        return BatchResult(rowcounts, rows)

    # -- transactions

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[SqlTransaction]:
        begin = b"BEGIN" if write else b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        async with self._open_tx(begin) as tx:
            yield tx

    @asynccontextmanager
    async def _open_tx(self, begin: bytes, *then: bytes) -> AsyncIterator[PostgresTransaction]:
        async with self._connection() as conn:
            try:
                await conn.execute(begin)
                for sql in then:
                    await conn.execute(sql)
            except Exception as exc:
                self._raise_if_down(exc, conn)
                raise
            yield PostgresTransaction(self, conn)  # on an exception, _put rolls the transaction back
            with anyio.CancelScope(shield=True):
                try:
                    await conn.execute(b"COMMIT")
                except Exception as exc:
                    self._raise_if_down(exc, conn)
                    raise

    def migration_lock(self) -> Any:
        """A transaction holding the migration advisory lock; no statement timeout while migrations run."""
        return self._open_tx(
            b"BEGIN",
            b"SET LOCAL statement_timeout = 0",
            f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})".encode(),
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._pool.close(timeout=5.0)


async def open_postgres_client(settings: Settings) -> PostgresClient:
    if not settings.postgres_url:
        raise ConfigError("the Postgres store backend 'pg' needs a URL; set OPENMA_POSTGRES_URL (or DATABASE_URL)")
    return await PostgresClient.open(settings.postgres_url, settings)


async def open_store_backend(settings: Settings) -> SqlStoreBackend:
    """Entry point of the "pg" store backend."""
    client = await open_postgres_client(settings)
    return SqlStoreBackend("pg", client)
