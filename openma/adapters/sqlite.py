"""The "cf" engine's client: SQLite (the engine under Cloudflare D1) through the stdlib ``sqlite3`` driver.

What the store family needs from SQLite besides SQL (lease locks, no wake-up channel) is the engine's, in
:mod:`openma.adapters.sqlite_engine`, which also opens the "cf" store backend.

* WAL journal, ``busy_timeout``, and ``BEGIN IMMEDIATE`` for every write, so writers queue on the database
  lock instead of failing half-way, and readers never wait for writers.
* One writer connection and a small pool of reader connections, each owned by a dedicated thread
  (:class:`~openma.adapters.threadworker.ThreadWorker`): the event loop never runs a blocking call.
* A write unit (:meth:`SqliteClient.run_batch`) is one thread hop: begin, statements, commit.
* Several processes may write one file: a writer that finds the lock taken waits ``busy_timeout`` inside
  SQLite, then retries until ``sqlite_lock_timeout`` has passed, and only then fails with
  :class:`~openma.errors.StorageUnavailable` (never a bare "database is locked").
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import attrs

from openma.adapters.sqlite_group import rows_of, run_group, run_unit
from openma.adapters.threadworker import ThreadWorker
from openma.errors import ConfigError, StorageUnavailable
from openma.ports.sql import BatchResult, Params, Row, SqlTransaction, Statement, TupleRow
from openma.settings import Settings

if TYPE_CHECKING:
    from openma.adapters.sql.backend import SqlStoreBackend
    from openma.adapters.sqlite_engine import SqliteEngine

T = TypeVar("T")

_SYNCHRONOUS: Final = "FULL"


class SqliteDialect:
    name: Final = "sqlite"

    def sql(self, text: str) -> str:
        return text

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and (
            "UNIQUE constraint failed" in str(exc) or "PRIMARY KEY" in str(exc)
        )

    def json_drop_keys(self, obj: str) -> str:
        # An RFC 7396 patch of nulls removes exactly those members; json_patch keeps other values' text.
        return f"json_patch({obj}, (SELECT json_group_object(value, NULL) FROM json_each(?)))"

    def json_key_count(self, obj: str) -> str:
        return f"(SELECT count(*) FROM json_each({obj}))"

    def byte_length(self, text: str) -> str:
        return f"length(CAST({text} AS BLOB))"

    def __repr__(self) -> str:
        return "SqliteDialect()"


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _retry_busy(fn: Callable[[], T], deadline: float) -> T:
    """Run ``fn`` (which already waits ``busy_timeout`` inside SQLite) again until ``deadline``."""
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def split_script(script: str) -> list[str]:
    """Split a SQL script into complete statements (semicolons inside literals and triggers are kept)."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        statements.append(buf.strip())
    return statements


class _Conn:
    """A connection and the thread that owns it; the blocking halves of every operation live here."""

    def __init__(self, name: str) -> None:
        self.worker = ThreadWorker(name)
        self.conn: sqlite3.Connection | None = None

    def open(self, path: str, busy_ms: int, deadline: float, *, writer: bool) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        if writer:
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"), deadline)
        conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS}")
        conn.execute("PRAGMA foreign_keys=OFF")
        self.conn = conn

    @property
    def c(self) -> sqlite3.Connection:
        assert self.conn is not None
        return self.conn

    def execute(self, sql: str, params: Params) -> int:
        return self.c.execute(sql, params).rowcount

    def executemany(self, sql: str, params: Iterable[Params]) -> int:
        return self.c.executemany(sql, params).rowcount

    def fetch_one(self, sql: str, params: Params) -> Row | None:
        cur = self.c.execute(sql, params)
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def fetch_all(self, sql: str, params: Params) -> list[Row]:
        return rows_of(self.c.execute(sql, params))

    def fetch_tuples(self, sql: str, params: Params) -> list[TupleRow]:
        return self.c.execute(sql, params).fetchall()

    def script(self, script: str) -> None:
        for statement in split_script(script):
            self.c.execute(statement)

    def begin(self, deadline: float, immediate: bool) -> None:
        sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        _retry_busy(lambda: self.c.execute(sql), deadline)

    def commit(self) -> None:
        self.c.execute("COMMIT")

    def rollback(self) -> None:
        if self.c.in_transaction:
            self.c.execute("ROLLBACK")

    def batch(self, statements: Sequence[Statement], deadline: float) -> BatchResult:
        c = self.c
        self.begin(deadline, immediate=True)
        try:
            result = run_unit(c, statements)
            c.execute("COMMIT" if result.committed else "ROLLBACK")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return result

    def group(self, units: Sequence[Sequence[Statement]], deadline: float) -> list[BatchResult | BaseException]:
        """Several write units in one transaction (see :func:`~openma.adapters.sqlite_group.run_group`)."""
        return run_group(self.c, units, lambda: self.begin(deadline, immediate=True), lambda u: self.batch(u, deadline))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _check_path(path: object) -> Path:
    """``sqlite_path`` as a :class:`Path`, or :class:`ConfigError` before anything touches the filesystem."""
    if not isinstance(path, str | Path):
        raise ConfigError(f"sqlite_path must be a file path, got {type(path).__name__}")
    text = str(path)
    if not text.strip():
        raise ConfigError("sqlite_path must not be empty")
    if "\x00" in text:
        raise ConfigError(f"sqlite_path {text!r} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"sqlite_path {text!r} is not valid Unicode (it holds a lone surrogate)") from None
    target = Path(text)
    if text != ":memory:" and target.is_dir():
        raise ConfigError(f"sqlite_path {text!r} is a directory; name a database file in it")
    return target


def _is_storage_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return _is_busy(exc) or "disk" in text or "unable to open" in text


@attrs.define(eq=False)
class _Unit:
    """A queued write unit and, once the writer has run it, its outcome (a result or an exception)."""

    statements: Sequence[Statement]
    outcome: BatchResult | BaseException | None = None


def _storage_error(exc: sqlite3.Error, path: str) -> StorageUnavailable:
    return StorageUnavailable(f"SQLite database {path!r} is unavailable: {exc}", engine="sqlite")


class SqliteTransaction:
    """Statements on the writer (or a reader) connection inside one open transaction."""

    def __init__(self, client: SqliteClient, conn: _Conn) -> None:
        self._client = client
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._client._call(self._conn, self._conn.execute, sql, params)

    async def executemany(self, sql: str, params: Iterable[Params]) -> int:
        return await self._client._call(self._conn, self._conn.executemany, sql, list(params))

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        return await self._client._call(self._conn, self._conn.fetch_one, sql, params)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._client._call(self._conn, self._conn.fetch_all, sql, params)

    async def execute_script(self, script: str) -> None:
        await self._client._call(self._conn, self._conn.script, script)


class SqliteClient:
    """The :class:`~openma.ports.sql.SqlClient` on one SQLite file."""

    dialect: Final = SqliteDialect()

    def __init__(self, path: str, *, busy_timeout_ms: int, lock_timeout: float, readers: int) -> None:
        self._path = path
        self._busy_ms = busy_timeout_ms
        self._lock_timeout = lock_timeout
        self._writer = _Conn("openma-sqlite-writer")
        self._readers = [_Conn(f"openma-sqlite-reader-{i}") for i in range(readers)]
        self._idle_readers = list(self._readers)
        self._reader_slots = anyio.Semaphore(readers)
        self._write_lock = anyio.Lock()
        self._queued: list[_Unit] = []  # write units waiting for the writer (group commit)
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteClient({self.path!r}, readers={len(self._readers)})"

    @property
    def path(self) -> str:
        """The database file (the engine keeps its lease-lock files beside it)."""
        return self._path

    def engine(self) -> SqliteEngine:
        """The SQLite engine over this client (what a store backend needs besides the client)."""
        from openma.adapters.sqlite_engine import SqliteEngine

        return SqliteEngine(self)

    @classmethod
    async def open(
        cls, path: str, *, busy_timeout_ms: int = 5000, lock_timeout: float = 30.0, readers: int = 4
    ) -> SqliteClient:
        """Open (creating the file and its directory if needed) and configure every connection.

        A path that cannot name a database file (not a string, empty, NUL, a lone surrogate, a directory) or
        a file that is not a SQLite database is :class:`ConfigError` naming ``sqlite_path``; nothing is created.
        """
        target = _check_path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the directory of sqlite_path {path!r}: {exc}") from None
        client = cls(str(target), busy_timeout_ms=busy_timeout_ms, lock_timeout=lock_timeout, readers=readers)
        try:
            deadline = time.monotonic() + lock_timeout
            await client._call(client._writer, client._writer.open, client.path, busy_timeout_ms, deadline, writer=True)
            for reader in client._readers:
                await client._call(reader, reader.open, client.path, busy_timeout_ms, deadline, writer=False)
        except sqlite3.DatabaseError as exc:  # "file is not a database", a corrupt header
            await client.aclose()
            raise ConfigError(f"sqlite_path {path!r} is not a usable SQLite database: {exc}") from None
        except BaseException:
            await client.aclose()
            raise
        return client

    async def _call(self, conn: _Conn, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = (lambda: fn(*args, **kwargs)) if kwargs else None
        try:
            if call is not None:
                return await conn.worker.call(call)
            return await conn.worker.call(fn, *args)
        except sqlite3.OperationalError as exc:
            if _is_storage_error(exc):
                raise _storage_error(exc, self.path) from exc
            raise

    def _deadline(self) -> float:
        return time.monotonic() + self._lock_timeout

    # -- autocommit calls

    # The fast paths below take the writer lock or a reader without yielding to the event loop when one is free
    # (``acquire_nowait``): an ``async with`` on an anyio lock or semaphore always passes through the loop, and
    # on a point read those extra loop turns cost more than the read itself.

    async def _lock_writer(self) -> None:
        try:
            self._write_lock.acquire_nowait()
        except anyio.WouldBlock:
            await self._write_lock.acquire()

    async def _take_reader(self) -> _Conn:
        try:
            self._reader_slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._reader_slots.acquire()
        return self._idle_readers.pop()

    def _give_reader(self, conn: _Conn) -> None:
        self._idle_readers.append(conn)
        self._reader_slots.release()

    async def run_batch(self, statements: Sequence[Statement]) -> BatchResult:
        """One write unit, committed (or rolled back) as a whole before this returns.

        Group commit: units that arrive while the writer is busy queue up, and whichever caller takes the
        writer next runs every queued unit in one transaction (a savepoint each, one ``COMMIT``, one fsync
        for all of them; see :meth:`_Conn.group`). Each caller gets its own unit's outcome only after that
        commit, so what is acknowledged is on disk, with ``synchronous=FULL`` as before; a unit that aborts
        or fails is rolled back alone.
        """
        unit = _Unit(statements)
        self._queued.append(unit)
        try:
            await self._lock_writer()
        except BaseException:
            if unit.outcome is None and unit in self._queued:
                self._queued.remove(unit)  # cancelled before any thread saw it: nothing was written
            raise
        try:
            if unit.outcome is None:
                group, self._queued = self._queued, []
                if len(group) == 1:
                    # Alone, the outcome is only this caller's: no shield (a cancelled caller's unit still runs
                    # to its end in the writer thread, before anything queued after it).
                    unit.outcome = (await self._run_group(group))[0]
                else:
                    # Shielded: the outcomes belong to every caller of the group, not only to this one.
                    with anyio.CancelScope(shield=True):
                        outcomes = await self._run_group(group)
                    for member, outcome in zip(group, outcomes, strict=True):
                        member.outcome = outcome
        finally:
            self._write_lock.release()
        done = unit.outcome
        assert done is not None
        if isinstance(done, BaseException):
            if isinstance(done, sqlite3.OperationalError) and _is_storage_error(done):
                raise _storage_error(done, self.path) from done
            raise done
        return done

    async def _run_group(self, group: list[_Unit]) -> list[BatchResult | BaseException]:
        """The outcomes of ``group``, run on the writer (one exception for all when the call itself failed)."""
        try:
            outcomes: list[BatchResult | BaseException] = await self._call(
                self._writer, self._writer.group, [u.statements for u in group], self._deadline()
            )
        except Exception as exc:
            return [exc] * len(group)
        return outcomes

    async def execute(self, sql: str, params: Params = ()) -> int:
        result = await self.run_batch([Statement(sql, params)])
        return result.rowcounts[0]

    async def executemany(self, sql: str, params: Iterable[Params]) -> int:
        async with self.transaction() as tx:
            return await tx.executemany(sql, params)

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[_Conn]:
        conn = await self._take_reader()
        try:
            yield conn
        finally:
            self._give_reader(conn)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        conn = await self._take_reader()
        try:
            return await self._call(conn, conn.fetch_one, sql, params)
        finally:
            self._give_reader(conn)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        conn = await self._take_reader()
        try:
            return await self._call(conn, conn.fetch_all, sql, params)
        finally:
            self._give_reader(conn)

    async def fetch_tuples(self, sql: str, params: Params = ()) -> list[TupleRow]:
        conn = await self._take_reader()
        try:
            return await self._call(conn, conn.fetch_tuples, sql, params)
        finally:
            self._give_reader(conn)

    # -- transactions

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[SqlTransaction]:
        if write:
            async with self._write_lock, self._open_tx(self._writer, immediate=True) as tx:
                yield tx
        else:
            async with self._reader() as conn, self._open_tx(conn, immediate=False) as tx:
                yield tx

    @asynccontextmanager
    async def _open_tx(self, conn: _Conn, *, immediate: bool) -> AsyncIterator[SqlTransaction]:
        await self._call(conn, conn.begin, self._deadline(), immediate)
        try:
            yield SqliteTransaction(self, conn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._call(conn, conn.rollback)
            raise
        else:
            with anyio.CancelScope(shield=True):
                try:
                    await self._call(conn, conn.commit)
                except BaseException:
                    await self._call(conn, conn.rollback)
                    raise

    def migration_lock(self) -> Any:
        """``BEGIN IMMEDIATE`` holds the database's write lock, which is the migration lock on SQLite."""
        return self.transaction(write=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            for conn in (self._writer, *self._readers):
                conn.worker.close(final=conn.close)
        with anyio.CancelScope(shield=True):
            for conn in (self._writer, *self._readers):
                await anyio.to_thread.run_sync(conn.worker.join, 5.0)


async def open_sqlite_client(settings: Settings) -> SqliteClient:
    return await SqliteClient.open(
        settings.sqlite_path,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        lock_timeout=settings.sqlite_lock_timeout,
        readers=settings.sqlite_readers,
    )


async def open_store_backend(settings: Settings) -> SqlStoreBackend:
    """The "cf" store backend; moved: import it from :mod:`openma.adapters.sqlite_engine`."""
    from openma.adapters.sqlite_engine import open_store_backend as open_cf

    return await open_cf(settings)
