"""The internal SQL port that the built-in store family is written against, once, for every engine.

SQL text uses ``?`` placeholders and portable syntax; what really differs between engines lives in the
:class:`Dialect` (placeholder style, upsert, ``RETURNING``, locking, JSON access, error classification).

Contract for an engine:

* ``execute`` / ``executemany`` return the number of rows changed.
* Rows come back as ``dict`` (column name → value); integers as ``int``, text as ``str``. A large read may
  ask for plain tuples instead (:meth:`SqlClient.fetch_tuples`), in select-list order.
* Outside ``transaction()`` every call is its own transaction (autocommit).
* ``transaction()`` yields a :class:`SqlTransaction` bound to one connection. It commits when the block
  exits normally and rolls back on any exception (cancellation included). ``write=True`` (the default)
  takes the write lock up front (SQLite ``BEGIN IMMEDIATE``), so a read-then-write inside it is not racy.
* A lost connection or unreachable server is :class:`~openma.errors.StorageUnavailable`, never a hang
  past the configured timeouts and never a partial write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeAlias

import attrs

Row: TypeAlias = dict[str, Any]
#: A row as a tuple of its values, in the statement's select-list order (see :meth:`SqlClient.fetch_tuples`).
TupleRow: TypeAlias = tuple[Any, ...]
Params: TypeAlias = Sequence[Any]


@attrs.frozen
class Statement:
    """One statement of a :meth:`SqlClient.run_batch` write unit."""

    sql: str
    params: Params = ()
    #: Collect the rows it returns (a ``SELECT`` or ``... RETURNING``).
    fetch: bool = False
    #: Abort the whole unit (roll back) if this statement changes or returns no rows.
    expect_rows: bool = False


@attrs.frozen
class BatchResult:
    """What a write unit did: per statement, rows changed (or returned) and fetched rows."""

    rowcounts: list[int]
    rows: list[list[Row]]
    #: Index of the ``expect_rows`` statement that found nothing (the unit was rolled back), else ``None``.
    aborted_at: int | None = None

    @property
    def committed(self) -> bool:
        return self.aborted_at is None


class Dialect(Protocol):
    """What differs between SQL engines. Implementations are stateless and shared."""

    @property
    def name(self) -> str:
        """Engine name: ``"sqlite"`` or ``"postgres"``."""
        ...

    def sql(self, text: str) -> str:
        """Translate portable SQL (``?`` placeholders) into this engine's form."""
        ...

    def is_unique_violation(self, exc: BaseException) -> bool:
        """True when ``exc`` is the engine's unique/primary-key violation."""
        ...

    def json_drop_keys(self, obj: str) -> str:
        """SQL for the JSON object text ``obj`` without the top-level members named in one ``?`` parameter
        (a JSON array of keys), as compact JSON text with every other member's text kept as stored."""
        ...

    def json_key_count(self, obj: str) -> str:
        """SQL for the number of top-level members of the JSON object text ``obj``."""
        ...

    def byte_length(self, text: str) -> str:
        """SQL for the length of ``text`` in UTF-8 bytes."""
        ...


class SqlExecutor(Protocol):
    """What can run statements: a client (autocommit) or a transaction."""

    async def execute(self, sql: str, params: Params = ()) -> int: ...

    async def executemany(self, sql: str, params: Iterable[Params]) -> int: ...

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...


class SqlTransaction(SqlExecutor, Protocol):
    """Statements on one connection inside one transaction."""

    async def execute_script(self, script: str) -> None:
        """Run several statements (a migration file) inside this transaction."""
        ...


class SqlClient(SqlExecutor, Protocol):
    """A connection pool to one database."""

    @property
    def dialect(self) -> Dialect: ...

    async def run_batch(self, statements: Sequence[Statement]) -> BatchResult:
        """Run ``statements`` as one atomic write unit, committing unless an ``expect_rows`` check fails.

        The fast path for the stores: one thread hop on SQLite, one transaction on Postgres. A unique
        violation (or any error) rolls the whole unit back and propagates.
        """
        ...

    async def fetch_tuples(self, sql: str, params: Params = ()) -> list[TupleRow]:
        """Every row of a read (autocommit), each as a tuple in select-list order rather than a ``dict``.

        For reads of many rows (a page of events), where a ``dict`` per row costs more than the row itself.
        """
        ...

    def transaction(self, *, write: bool = True) -> AbstractAsyncContextManager[SqlTransaction]: ...

    def migration_lock(self) -> AbstractAsyncContextManager[SqlTransaction]:
        """A transaction that also holds the database-wide migration lock until it ends."""
        ...

    async def aclose(self) -> None: ...
