"""The "pg" engine's client: Postgres through psycopg 3 and a ``psycopg_pool.AsyncConnectionPool``.

What the store family needs from Postgres besides SQL (advisory lease locks, LISTEN/NOTIFY, the
one-statement append) is the engine's, in :mod:`openma.adapters.postgres_engine`, which also opens the
"pg" store backend.

* The driver is imported when a client opens, not when this module is imported: without the ``pg`` extra,
  choosing "pg" is a :class:`~openma.errors.ConfigError` that says ``pip install 'openma[pg]'``.
* Pooled connections are in autocommit mode and return rows as dicts (tuples for ``fetch_tuples``); a ``list``
  parameter (an array) is sent in binary. Portable SQL (``?`` placeholders) is translated once per text.
  They are :class:`openma.adapters.pg_wait.Connection`: psycopg's, with a cheaper wait on the socket (a large
  result arrives in many chunks, each a wait).
* A write unit (:meth:`PostgresClient.run_batch`) is one transaction sent in as few round trips as the unit
  allows: ``BEGIN``, the statements and ``COMMIT`` go out together in pipeline mode, so a unit without an
  ``expect_rows`` check costs one round trip. A unit with checks is cut after each checked statement (one more
  round trip per check); a single statement runs alone, in autocommit, which is already atomic.
* Every connection taken from the pool is first checked for a message the server sent while it sat idle (a
  terminated backend or a shut-down server announces itself that way); such a connection is discarded and
  another one taken, so the first call after a restart or a ``pg_terminate_backend`` does not fail. The check
  is one non-blocking ``poll(2)`` of the socket, not a round trip (never ``select(2)``, which cannot watch a
  descriptor numbered 1024 or more).
* The client keeps the last connection given back (idle, no transaction) for the next call instead of
  returning it to the pool, while no task waits for the pool: a run of calls from one task reuses one
  connection without the pool's checkout and return (about a tenth of the client's time of a one-event
  append). Every 1 000th return goes through the pool, which retires a connection past its lifetime.
* A write unit that fails in the server (a constraint, a conflict, anything) leaves its connection as healthy
  as it found it: the failed transaction is rolled back with psycopg's ``rollback()``, which also forgets
  every statement psycopg prepared on that connection and deallocates them on the server (an aborted
  pipeline skips a ``Parse`` psycopg has already recorded as prepared); a connection that cannot be reset
  so is closed and replaced. Errors are raised from the pipeline block itself, so psycopg logs nothing.
* Every message built from a driver error has its connection secrets masked
  (:func:`~openma.settings.redact_secrets`); where the driver's own text had to be masked, the driver error is
  not chained either.
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
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from openma.adapters.pg_connect import (
    INSTALL_HINT,
    TX_ACTIVE,
    TX_IDLE,
    TX_INERROR,
    TX_INTRANS,
    UNIQUE_VIOLATION,
    PostgresDialect,
    connection_params,
    driver_reason,
    idle_socket_has_news,
    in_pipeline,
    load_driver,
    param_adapters,
    require_asyncio,
    shield,
    translate,
)
from openma.adapters.pg_connect import prepare_flag as _prepare
from openma.adapters.pg_connect import send_segment as _send
from openma.errors import ConfigError, StorageUnavailable
from openma.ports.sql import BatchResult, Params, Row, SqlTransaction, Statement, TupleRow
from openma.ports.telemetry import NullTelemetry, Telemetry
from openma.redact import mask_url
from openma.settings import Settings

__all__ = [
    "INSTALL_HINT",
    "MIGRATION_LOCK_KEY",
    "UNIQUE_VIOLATION",
    "PostgresClient",
    "PostgresDialect",
    "PostgresTransaction",
    "connection_params",
    "load_driver",
    "open_postgres_client",
    "open_store_backend",
    "translate",
]

if TYPE_CHECKING:
    from psycopg import AsyncCursor
    from psycopg_pool import AsyncConnectionPool

    from openma.adapters.pg_wait import Connection
    from openma.adapters.postgres_engine import PostgresEngine
    from openma.adapters.sql.backend import SqlStoreBackend

    Conn = Connection[Row]

#: The advisory lock that serializes migrators on one database (``b"openma.m"`` as a signed 64-bit integer).
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"openma.m", "big", signed=True)
_CTE: Final = re.compile(r"^\s*WITH\b", re.I)
#: How many returns in a row may keep the connection (see the module docstring).
_HOT_RETURNS: Final = 1000


_T = TypeVar("_T")


async def _rowcount(cur: AsyncCursor[Any]) -> int:
    return cur.rowcount


class PostgresTransaction:
    """Statements on one pooled connection inside one open transaction."""

    def __init__(self, client: PostgresClient, conn: Conn) -> None:
        self._client = client
        self._conn = conn

    async def _cursor(self, sql: str, params: Params) -> AsyncCursor[Row]:
        try:
            return await self._conn.execute(translate(sql), params, prepare=_prepare(params))
        except Exception as exc:
            self._client._raise_if_down(exc, self._conn)
            raise

    async def execute(self, sql: str, params: Params = ()) -> int:
        return (await self._cursor(sql, params)).rowcount

    async def executemany(self, sql: str, params: Iterable[Params]) -> int:
        cur = self._conn.cursor()
        rows = list(params)
        try:
            await in_pipeline(self._conn, lambda: cur.executemany(translate(sql), rows))
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
        self._url = mask_url(url) or ""
        self._conninfo = url if not isinstance(pool.conninfo, str) else pool.conninfo
        self._down: tuple[type[BaseException], ...] = (psycopg.OperationalError, pool_module.PoolTimeout)
        self._interface_error: type[BaseException] = psycopg.InterfaceError
        self._tuple_row: Any = psycopg.rows.tuple_row
        self._max_checks = (pool.max_size or 1) + 1
        #: The kept connection (see the module docstring), the pool's queue of waiting tasks, and how many more
        #: returns may keep a connection before one goes through the pool.
        self._hot: Conn | None = None
        self._waiting: Any = getattr(pool, "_waiting", None)
        self._hot_left = _HOT_RETURNS
        self._closed = False
        #: Where failures this client recovers from on its own are reported (``silent_catch``).
        self.telemetry: Telemetry = NullTelemetry()

    def __repr__(self) -> str:
        return f"PostgresClient({self._url!r})"

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        """The pool. Between its own calls the client may keep one idle connection out of it (see the module
        docstring), so a caller borrowing from the pool directly needs room for one more connection."""
        return self._pool

    @property
    def conninfo(self) -> str:
        """The connection string every connection of this client uses (the settings' URL with openma's
        options). It holds the password: pass it to a driver, never to a log."""
        return self._conninfo

    def engine(self) -> PostgresEngine:
        """The Postgres engine over this client (what a store backend needs besides the client)."""
        from openma.adapters.postgres_engine import PostgresEngine

        return PostgresEngine(self)

    @classmethod
    async def open(cls, url: str, settings: Settings | None = None) -> PostgresClient:
        """Connect once (so a bad URL or password fails now, with the server's reason), then open the pool."""
        settings = settings or Settings(postgres_url=url)
        require_asyncio()
        psycopg, pool_module = load_driver()
        from psycopg.rows import dict_row

        from openma.adapters.pg_wait import Connection

        conninfo = connection_params(url, settings, psycopg)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "prepare_threshold": 5 if settings.pg_prepared_statements else None,
            "context": param_adapters(psycopg),
        }
        masked = mask_url(url)
        try:
            probe = await Connection.connect(conninfo, **kwargs)
        except psycopg.ProgrammingError as exc:
            reason, cause = driver_reason(exc, url, conninfo)
            raise ConfigError(f"postgres_url {masked!r} is not usable: {reason}") from cause
        except psycopg.Error as exc:
            reason, cause = driver_reason(exc, url, conninfo)
            raise StorageUnavailable(f"cannot connect to Postgres at {masked}: {reason}", engine="postgres") from cause
        await probe.close()
        pool: AsyncConnectionPool[Conn] = pool_module.AsyncConnectionPool(
            conninfo,
            connection_class=Connection,
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
        reason, cause = driver_reason(exc, self._conninfo)
        if sqlstate == "57014":
            reason = f"statement timed out or was cancelled ({reason})"
        raise StorageUnavailable(
            f"Postgres at {self._url} is unavailable: {reason}", engine="postgres", sqlstate=sqlstate
        ) from cause

    def _silent(self, where: str, exc: BaseException) -> None:
        reason, _ = driver_reason(exc, self._conninfo)
        self.telemetry.emit("silent_catch", where=where, error=type(exc).__name__, message=reason[:300])

    async def _get(self) -> Conn:
        """A pooled connection that has not heard from the server while idle (see the module docstring)."""
        if self._closed:
            raise ConfigError("this Postgres client is closed")
        pool = self._pool
        hot, self._hot = self._hot, None
        if hot is not None:
            if not idle_socket_has_news(hot):
                return hot
            with shield():
                await hot.close()
                await pool.putconn(hot)
        for attempt in range(self._max_checks):
            try:
                conn = await pool.getconn()
            except Exception as exc:
                self._raise_if_down(exc, None)
                raise
            # The last one is handed out whatever the check says: the call itself reports what is wrong.
            if attempt == self._max_checks - 1 or not idle_socket_has_news(conn):
                return conn
            with shield():
                await conn.close()
                await pool.putconn(conn)  # closed: the pool drops it and opens a replacement
        raise AssertionError("unreachable")  # pragma: no cover

    async def _put(self, conn: Conn) -> None:
        """Give ``conn`` back, first ending whatever it was left doing (an open transaction, a cut-off command)."""
        status = conn.pgconn.transaction_status
        if status == TX_IDLE and self._hot is None and not self._closed and self._waiting is not None:
            self._hot_left -= 1
            if not self._waiting and self._hot_left:
                self._hot = conn  # no await: a cancellation cannot lose it
                return
            self._hot_left = self._hot_left or _HOT_RETURNS
        with shield():
            if status == TX_ACTIVE:
                await conn.close()
            elif status != TX_IDLE:
                await self._reset(conn)
            await self._pool.putconn(conn)

    async def _reset(self, conn: Conn) -> None:
        """End an open or failed transaction, forgetting psycopg's prepared statements; close if that fails."""
        if conn.pgconn.transaction_status not in (TX_INTRANS, TX_INERROR):
            return
        try:
            await conn.rollback()  # unlike a plain ROLLBACK statement, this always resets the prepared cache
        except Exception as exc:
            self._silent("postgres.reset_connection", exc)
            await conn.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        conn = await self._get()
        try:
            yield conn
        finally:
            await self._put(conn)

    # -- autocommit calls: one statement on a pooled connection, its result read by ``read(cursor)``
    async def _autocommit(
        self, sql: str, params: Params, read: Callable[[AsyncCursor[Any]], Awaitable[_T]], row_factory: Any = None
    ) -> _T:
        conn = await self._get()
        try:
            cur = conn.cursor(row_factory=row_factory) if row_factory is not None else conn.cursor()
            await cur.execute(translate(sql), params, prepare=_prepare(params))
            return await read(cur)
        except Exception as exc:
            self._raise_if_down(exc, conn)
            raise
        finally:
            await self._put(conn)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._autocommit(sql, params, _rowcount)

    async def executemany(self, sql: str, params: Iterable[Params]) -> int:
        async with self.transaction() as tx:
            return await tx.executemany(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        return await self._autocommit(sql, params, lambda cur: cur.fetchone())

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._autocommit(sql, params, lambda cur: cur.fetchall())

    async def fetch_tuples(self, sql: str, params: Params = ()) -> list[TupleRow]:
        return await self._autocommit(sql, params, lambda cur: cur.fetchall(), self._tuple_row)

    # -- write units

    async def run_batch(self, statements: Sequence[Statement]) -> BatchResult:
        if not statements:
            return BatchResult([], [])
        conn = await self._get()
        try:
            if len(statements) == 1 and not (statements[0].expect_rows and _CTE.match(statements[0].sql)):
                return await self._single(conn, statements[0])
            try:
                return await self._pipelined(conn, statements)
            except Exception:
                with shield():
                    await self._after_pipeline_error(conn)
                raise
        except Exception as exc:
            self._raise_if_down(exc, conn)
            raise
        finally:
            await self._put(conn)

    async def _after_pipeline_error(self, conn: Conn) -> None:
        """Make ``conn`` safe to reuse after a unit failed part-way through a pipeline.

        The failed unit's transaction is rolled back with ``rollback()``, which resets psycopg's prepared
        statements; a connection no longer in a transaction cannot be reset that way, so it is closed (the
        pool replaces it).
        """
        if conn.closed:
            return
        if conn.pgconn.transaction_status in (TX_INTRANS, TX_INERROR):
            await self._reset(conn)
        elif conn.pgconn.transaction_status != TX_ACTIVE:
            await conn.close()

    async def _single(self, conn: Conn, st: Statement) -> BatchResult:
        """One statement in autocommit is its own transaction; one that changed nothing wrote nothing."""
        cur = conn.kept_cursor()
        await cur.execute(translate(st.sql), st.params, prepare=_prepare(st.params))
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
            cursors: list[AsyncCursor[Row]] = []
            await in_pipeline(conn, functools.partial(_send, conn, segment, cursors, begin=not begun, commit=commit))
            begun = True
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
            with shield():
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
        hot, self._hot = self._hot, None
        with shield():
            if hot is not None:
                await self._pool.putconn(hot)
            await self._pool.close(timeout=5.0)


async def open_postgres_client(settings: Settings) -> PostgresClient:
    if not settings.postgres_url:
        raise ConfigError("the Postgres store backend 'pg' needs a URL; set OPENMA_POSTGRES_URL (or DATABASE_URL)")
    return await PostgresClient.open(settings.postgres_url, settings)


async def open_store_backend(settings: Settings) -> SqlStoreBackend:
    """The "pg" store backend; moved: import it from :mod:`openma.adapters.postgres_engine`."""
    from openma.adapters.postgres_engine import open_store_backend as open_pg

    return await open_pg(settings)
