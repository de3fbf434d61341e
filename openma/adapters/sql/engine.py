"""The engine contract: what one database engine supplies to the portable SQL store family.

The stores in ``openma/adapters/sql`` are written once, in portable SQL over a
:class:`~openma.ports.sql.SqlClient`. What really differs between engines lives in one class per engine
(:class:`~openma.adapters.sqlite_engine.SqliteEngine`,
:class:`~openma.adapters.postgres_engine.PostgresEngine`), subclasses of :class:`SqlEngine` that
override a few hooks, in the way DBOS keeps one system-database class with per-dialect subclasses.
:class:`~openma.adapters.sql.backend.SqlStoreBackend` receives its engine; the portable code asks the
engine, never the engine's name.

Contract for an engine (each hook's docstring has the details):

* :attr:`SqlEngine.client`: the :class:`~openma.ports.sql.SqlClient` the stores run on, and
  :attr:`SqlEngine.dialect`, its dialect (SQL text differences: placeholders, JSON, byte length).
* :attr:`SqlEngine.migrations`: the folder of numbered ``NNNN_name.sql`` files this engine applies.
* :meth:`SqlEngine.lease_lock`: the lock under session actors (required; it must die with its holder).
* :meth:`SqlEngine.wakeup_channel`: how this process hears about other processes' writes, or ``None`` when
  the engine has no such channel (followers then poll).
* :meth:`SqlEngine.notify_statement`: the statement that tells other processes, run inside the write unit
  that changed the session, or ``None``.
* :meth:`SqlEngine.fenced_append_statement`: one statement doing a whole fenced append (bump the counter,
  notify, insert), or ``None`` to use the portable multi-statement write unit.
* :meth:`SqlEngine.inbox_post_statement`: one statement doing a whole post into a session's inbox (bump the
  inbox counter, insert, mark the session runnable, notify), or ``None`` to use the portable write unit.
* :meth:`SqlEngine.rows_below_counter`: the insert of a write unit's new rows at the positions just below a
  session counter the unit has bumped (the log's seqs, the inbox's positions).
* :meth:`SqlEngine.event_id_key`, :meth:`SqlEngine.event_ids_absent`, :meth:`SqlEngine.event_id_rows`: lookups
  by event id in the log or the inbox (one row's key; the guard of a write unit that refuses ids already
  there; the rows of given ids), in a form this engine's planner serves from the unique event-id index.
* :meth:`SqlEngine.is_unique_violation`: whether a driver error is a unique or primary-key violation.
* :meth:`SqlEngine.with_client`: the same engine over another client (a wrapper that traces or injects
  faults), which must delegate the engine-specific properties (``path``, ``conninfo``) to the real client.

The defaults of :class:`SqlEngine` are the portable behaviour (no channel, no notification, no
one-statement append); an engine overrides only what it does better.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, ClassVar, Protocol, Self

from openma.core.tail import WakeHub
from openma.errors import ConfigError
from openma.ports.lease import LeaseLock
from openma.ports.sql import Dialect, SqlClient, Statement
from openma.ports.telemetry import Telemetry

__all__ = ["SqlEngine", "WakeupChannel", "engine_of", "migrations_folder"]


def migrations_folder(name: str) -> Traversable:
    """The shipped migrations folder ``openma/adapters/sql/migrations/<name>``."""
    return resources.files("openma.adapters.sql") / "migrations" / name


class WakeupChannel(Protocol):
    """A background listener that turns other processes' notifications into wake-ups on a ``WakeHub``.

    While it is not :attr:`healthy`, followers poll; on every (re)connect it wakes every follower
    (``hub.notify_all()``), since notifications may have been missed meanwhile.
    """

    #: Where the channel reports failures it recovers from (``silent_catch``).
    telemetry: Telemetry

    @property
    def healthy(self) -> bool:
        """True while notifications are being received."""
        ...

    def start(self) -> None:
        """Start listening in the background; idempotent."""
        ...

    async def aclose(self) -> None:
        """Stop listening and release the connection; idempotent."""
        ...


class SqlEngine(abc.ABC):
    """One database engine under the SQL store family: its client and the hooks where engines differ."""

    #: The folder of this engine's migration files (see :func:`migrations_folder`).
    migrations: ClassVar[Traversable]

    def __init__(self, client: SqlClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r})"

    @property
    def client(self) -> SqlClient:
        """The client every store of the backend runs on."""
        return self._client

    @property
    def dialect(self) -> Dialect:
        """The client's SQL dialect."""
        return self._client.dialect

    def with_client(self, client: SqlClient) -> Self:
        """This engine over ``client`` (a wrapper of this engine's client); the hooks stay this engine's."""
        return type(self)(client)

    @abc.abstractmethod
    def lease_lock(self, telemetry: Telemetry) -> LeaseLock:
        """A new lease lock for session actors, shared by every process on the same database.

        It must be exclusive across processes and freed as soon as its holder dies (see
        :mod:`openma.ports.lease`). The backend creates one and closes it with itself.
        """

    def wakeup_channel(self, hub: WakeHub, telemetry: Telemetry) -> WakeupChannel | None:
        """A listener that feeds ``hub`` with other processes' writes (not started), or ``None``.

        ``None`` (the default) means the engine has no channel: followers re-read every poll interval.
        Keys put on ``hub`` are ``(kind, tenant_id, session_id)`` tuples, ``kind`` one of
        :data:`openma.adapters.sql.wakeups.EVENTS` and :data:`~openma.adapters.sql.wakeups.INBOX`.
        """
        return None

    def notify_statement(self, kind: str, tenant_id: str, session_id: str) -> Statement | None:
        """The statement that tells other processes that ``kind`` changed for a session, or ``None``.

        Run inside the write unit that made the change, so the notification goes out if and only if the
        write commits. ``None`` (the default) when the engine has no wake-up channel.
        """
        return None

    def fenced_append_statement(
        self,
        *,
        tenant_id: str,
        session_id: str,
        count: int,
        guard_sql: str,
        guard_params: Sequence[Any],
        insert_sql: str,
        values_sql: str,
        insert_params: Sequence[Any],
        dedup_sql: str = "",
        dedup_params: Sequence[Any] = (),
    ) -> Statement | None:
        """One statement that appends ``count`` events to a session, or ``None`` for the portable write unit.

        The statement must, atomically: add ``count`` to ``sessions.last_seq`` of the live (not deleted)
        session ``(tenant_id, session_id)`` only when ``guard_sql`` holds (conditions starting with
        ``" AND "``, with ``guard_params``: the lease epoch fence); never store an event id already in the
        session's log, either by adding ``dedup_sql`` (conditions in the same form, with ``dedup_params``:
        none of the ids is in the log) to the guard, or by failing whole with a unique violation
        (:meth:`is_unique_violation`) on the log's unique ``(tenant_id, session_id, event_id)`` index, which
        the log treats as a retry (it looks the ids up and writes only the others); notify other processes
        (kind ``EVENTS``) when it did; and run ``insert_sql`` (an ``INSERT ... SELECT`` head whose select
        list reads the bumped session as ``s`` with columns ``tenant_id, id, last_seq`` and the new rows as
        ``v``, from ``(VALUES values_sql) AS v``; ``insert_params`` are the parameters of the head and then
        of ``values_sql``), returning ``seq, event_id`` of every inserted row (``fetch=True``). When the
        guard (or the dedup check) fails it changes nothing and returns no rows.

        ``None`` (the default) means "run the portable multi-statement unit" (a checked ``UPDATE``, the
        ``INSERT``, then :meth:`notify_statement`).
        """
        return None

    def inbox_post_statement(
        self,
        *,
        tenant_id: str,
        session_id: str,
        count: int,
        live_sql: str,
        insert_sql: str,
        values_sql: str,
        insert_params: Sequence[Any],
        runnable_sql: str,
        runnable_params: Sequence[Any],
    ) -> Statement | None:
        """One statement that posts ``count`` inputs to a session's inbox, or ``None`` for the portable unit.

        The statement must, atomically: add ``count`` to ``sessions.last_inbox_pos`` of the session
        ``(tenant_id, session_id)`` only when ``live_sql`` holds (conditions starting with ``" AND "``: the
        session takes input); run ``insert_sql`` (an ``INSERT ... SELECT`` head whose select list reads the
        bumped session as ``s`` with columns ``tenant_id, id, last_inbox_pos`` and the new rows as ``v``, from
        ``(VALUES values_sql) AS v``; ``insert_params`` are the parameters of the head and then of
        ``values_sql``), returning ``pos, event_id`` of every inserted row (``fetch=True``); run
        ``runnable_sql`` (an ``INSERT ... SELECT`` reading ``s``, with ``runnable_params``); and notify other
        processes (kind ``INBOX``). An event id already in the inbox fails it whole with a unique violation
        (:meth:`is_unique_violation`), which the inbox treats as a retry. When the session takes no input it
        changes nothing and returns no rows.

        ``None`` (the default) means "run the portable multi-statement unit".
        """
        return None

    def rows_below_counter(
        self,
        *,
        head: str,
        counter: str,
        tenant_id: str,
        session_id: str,
        count: int,
        rows: Sequence[Any],
        tail: Sequence[Any],
    ) -> Statement:
        """The insert of ``count`` new rows that take the positions just below the session's ``counter``.

        The write unit has already added ``count`` to ``sessions.<counter>`` of ``(tenant_id, session_id)``, so the
        rows take ``counter - count + 1`` to ``counter``, in order. ``head`` is ``INSERT INTO table (columns)``
        whose columns are: tenant id, session id, the position, four columns of each row's own, then one
        column per value of ``tail`` (the same for every row). ``rows`` is flat, five values per row: its
        1-based index in the unit, then its four values. The statement returns nothing.

        The default reads the session row once and joins it with the rows as ``(VALUES ...)``; an engine
        whose planner makes that join costly overrides it.
        """
        return Statement(
            _below_counter_sql(head, counter, count, len(tail)), [count, *tail, *rows, tenant_id, session_id]
        )

    def event_id_key(self, alias: str, id_sql: str) -> str:
        """The condition that ``alias`` (a row of the event log or the inbox) has the key ``(?, ?, id_sql)``.

        Its parameters are the tenant id, the session id, then those of ``id_sql`` (in every engine's form). The
        default: ``alias.tenant_id = ? AND alias.session_id = ? AND alias.event_id = id_sql``.
        """
        return f"{alias}.tenant_id = ? AND {alias}.session_id = ? AND {alias}.event_id = {id_sql}"

    def event_ids_absent(
        self, table: str, tenant_id: str, session_id: str, event_ids: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """A condition, with its parameters, that holds when none of ``event_ids`` is in ``table`` for the session.

        ``table`` has ``tenant_id, session_id, event_id`` columns with a unique index on the three (the event log,
        the inbox). A write unit guards itself with it (``" AND " + sql``), so a retried id is refused without an
        error. The default is one ``NOT EXISTS`` over ``event_id IN (...)``; an engine whose planner serves
        that from another index of the session overrides it with a lookup per id.
        """
        marks = ", ".join(["?"] * len(event_ids))
        sql = (
            f"NOT EXISTS (SELECT 1 FROM {table} d WHERE d.tenant_id = ? AND d.session_id = ?"
            f" AND d.event_id IN ({marks}))"
        )
        return sql, [tenant_id, session_id, *event_ids]

    def event_id_rows(
        self, table: str, alias: str, tenant_id: str, session_id: str, event_ids: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """A ``FROM`` item, with its parameters, of the rows of ``table`` in the session with one of ``event_ids``.

        ``table`` is as for :meth:`event_ids_absent`; the statement reads the rows' columns as ``alias.column``.
        The default is a subquery over ``event_id IN (...)``.
        """
        marks = ", ".join(["?"] * len(event_ids))
        sql = f"(SELECT * FROM {table} WHERE tenant_id = ? AND session_id = ? AND event_id IN ({marks})) AS {alias}"
        return sql, [tenant_id, session_id, *event_ids]

    def is_unique_violation(self, exc: BaseException) -> bool:
        """True when ``exc`` is this engine's unique or primary-key violation."""
        return self.dialect.is_unique_violation(exc)


@functools.lru_cache(maxsize=128)
def _below_counter_sql(head: str, counter: str, count: int, tail: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?)"] * count)
    return (
        f"{head} SELECT s.tenant_id, s.id, s.{counter} - ? + v.column1, v.column2, v.column3, v.column4, v.column5"
        f"{', ?' * tail} FROM sessions s CROSS JOIN (VALUES {values}) AS v WHERE s.tenant_id = ? AND s.id = ?"
    )


def engine_of(source: SqlEngine | SqlClient) -> SqlEngine:
    """``source`` if it is an engine; else the engine of a built-in engine's client, bound to that client.

    Clients of the built-in engines have an ``engine()`` method. A wrapper that delegates attribute access
    to such a client gets its engine rebound to the wrapper (:meth:`SqlEngine.with_client`), so the wrapper's
    calls are the ones the stores make.
    """
    if isinstance(source, SqlEngine):
        return source
    make = getattr(source, "engine", None)
    if not callable(make):
        raise ConfigError(
            f"{source!r} is not a SqlEngine and names none; pass an engine "
            "(openma.adapters.sqlite_engine.SqliteEngine, ...postgres_engine.PostgresEngine, or your own)"
        )
    engine = make()
    if not isinstance(engine, SqlEngine):
        raise ConfigError(f"{source!r}.engine() returned {engine!r}, not a SqlEngine")
    return engine if engine.client is source else engine.with_client(source)
