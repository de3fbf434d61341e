"""The "pg" store backend: the SQL store family on Postgres (psycopg 3).

What Postgres does its own way:

* Lease locks are session-level advisory locks, each on a dedicated connection: exclusive across hosts,
  freed by the server when the holder's connection drops.
* Wake-ups cross processes: every write unit that moves a session runs ``SELECT pg_notify(...)`` (so the
  notification goes out if and only if the write commits), and one dedicated ``LISTEN`` connection per
  process (:class:`~openma.adapters.pg_notify.PgListener`) feeds the in-process hub.
* An append is one statement (a CTE that bumps the fenced counter, notifies and inserts): one round trip.
* In the one-statement append a retried event id is refused by the unique ``(tenant_id, session_id,
  event_id)`` index itself, not by a ``NOT EXISTS`` check: on a table without fresh statistics (a new
  database; autovacuum analyzes it a minute or more later) the planner served that check from another index on
  ``(tenant_id, session_id, ...)`` (the primary key, the type index), filtering every event of the session,
  so each append slowed down with the session's length. A retry costs one failed statement (and an ``ERROR``
  line in the server's log) before the log looks the ids up.
* A batch of more than :data:`ARRAY_ROWS` events goes in as columns (``unnest`` of one array parameter per
  column, sent in binary) instead of a ``VALUES`` list: one statement text for every batch size, so it is
  prepared like any small statement, with a few parameters instead of five per event (a batch of 100 took
  about half the time). Smaller batches keep the ``VALUES`` list, which is prepared as it is.
* A post into the inbox is one statement too (bump the inbox counter, insert, mark the session runnable,
  notify), where the portable unit is five statements in a pipeline: psycopg flushes and polls the socket
  after each statement of a pipeline, which cost more client time than the statements themselves.
* A lookup by event id (the dedup guard of a status change, the promote's) must be served by the unique
  event-id index. Every other index of the event log and of the inbox starts with ``(tenant_id, session_id)``;
  before a table's first ANALYZE the planner estimates about one row per session and costed those the same as
  the event-id index, or cheaper, then filtered every row of the session. So the unique index leads with
  ``event_id`` (migration 0012) and a lookup compares the tenant and the session as expressions
  (``tenant_id || '' = ?``) that no index matches: its one indexable condition is the event id, which only
  the event-id index can serve (:meth:`PostgresEngine.event_id_key`). Several ids are looked up one by one.
* A unique violation is SQLSTATE ``23505``.

The driver is imported when a client or a lock opens, not when this module is imported, so a bare install
without the ``pg`` extra imports everything the SQLite engine needs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Final, Protocol

from openma.adapters.locks.pg_advisory import PgAdvisoryLeaseLock
from openma.adapters.pg_connect import load_driver
from openma.adapters.pg_notify import CHANNEL, PgListener, payload
from openma.adapters.postgres import open_postgres_client
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.engine import SqlEngine, migrations_folder
from openma.adapters.sql.wakeups import EVENTS, INBOX
from openma.core.tail import WakeHub
from openma.ports.lease import LeaseLock
from openma.ports.sql import SqlClient, Statement
from openma.ports.telemetry import Telemetry
from openma.settings import Settings

__all__ = ["ARRAY_ROWS", "PostgresEngine", "as_columns", "open_store_backend"]

#: Batches of more rows than this are sent as arrays (see the module docstring). At this size the ``VALUES``
#: form has more parameters than the client prepares (``pg_connect.PREPARE_MAX_PARAMS``).
ARRAY_ROWS: Final = 4


def _array_type(column: Sequence[Any]) -> str | None:
    """The Postgres array type for a column of values: ``int8`` (all integers), ``text`` (text or NULL)."""
    if all(type(x) is int for x in column):
        return "int8"
    if all(x is None or type(x) is str for x in column):
        return "text"
    return None


def as_columns(count: int, values_sql: str, params: Sequence[Any]) -> tuple[str, list[Any]] | None:
    """``(VALUES values_sql) AS v`` with its parameters (the last of ``params``) as ``unnest`` of arrays.

    Returns the ``FROM`` item (``unnest(?::int8[], ?::text[], ...) AS v(column1, column2, ...)``, the same
    columns as a ``VALUES`` list) and ``params`` with the rows' parameters replaced by one list per column;
    ``None`` when ``values_sql`` is not ``count`` rows of plain placeholders or a column mixes types.
    """
    width, extra = divmod(values_sql.count("?"), count) if count else (0, 1)
    if not width or extra:
        return None
    row = f"({', '.join(['?'] * width)})"
    if values_sql != ", ".join([row] * count):
        return None
    head = len(params) - width * count
    if head < 0:
        return None
    flat = params[head:]
    columns = [list(flat[k::width]) for k in range(width)]
    types = [_array_type(c) for c in columns]
    if None in types:
        return None
    unnest = ", ".join(f"?::{t}[]" for t in types)
    names = ", ".join(f"column{k}" for k in range(1, width + 1))
    return f"unnest({unnest}) AS v({names})", [*params[:head], *columns]


@functools.lru_cache(maxsize=256)
def _fenced_append_sql(guard_sql: str, insert_sql: str, source: str) -> str:
    """The text of the one-statement append, built once per shape (it runs on every append)."""
    return (
        "WITH s AS (UPDATE sessions SET last_seq = last_seq + ? WHERE tenant_id = ? AND id = ?"
        f" AND deleted_at IS NULL{guard_sql} RETURNING tenant_id, id, last_seq),"
        " w AS (SELECT pg_notify(?, ?) AS n FROM s) "
        f"{insert_sql} FROM s, w, {source} RETURNING seq, event_id"
    )


@functools.lru_cache(maxsize=256)
def _inbox_post_sql(live_sql: str, insert_sql: str, source: str, runnable_sql: str) -> str:
    """The text of the one-statement post, built once per shape."""
    return (
        "WITH s AS (UPDATE sessions SET last_inbox_pos = last_inbox_pos + ? WHERE tenant_id = ? AND id = ?"
        f"{live_sql} RETURNING tenant_id, id, last_inbox_pos),"
        f" i AS ({insert_sql} FROM s, {source} RETURNING pos, event_id),"
        f" r AS ({runnable_sql}),"
        " w AS (SELECT pg_notify(?, ?) AS n FROM s) "
        "SELECT i.pos, i.event_id FROM i, w"
    )


class PostgresLike(SqlClient, Protocol):
    """A Postgres client (or a wrapper of one): a SqlClient that tells its connection string."""

    @property
    def conninfo(self) -> str:
        """The connection string (with the password) for the dedicated lock and LISTEN connections."""
        ...


class PostgresEngine(SqlEngine):
    """The Postgres engine: advisory lease locks, LISTEN/NOTIFY wake-ups, one-statement appends."""

    migrations = migrations_folder("postgres")

    def __init__(self, client: PostgresLike) -> None:
        super().__init__(client)
        self._pg = client

    @property
    def client(self) -> PostgresLike:
        return self._pg

    def lease_lock(self, telemetry: Telemetry) -> LeaseLock:
        """Advisory locks, each held on its own connection to the client's database."""
        psycopg, _ = load_driver()
        return PgAdvisoryLeaseLock(self._pg.conninfo, psycopg, telemetry=telemetry)

    def wakeup_channel(self, hub: WakeHub, telemetry: Telemetry) -> PgListener:
        """One dedicated ``LISTEN`` connection on :data:`~openma.adapters.pg_notify.CHANNEL`."""
        return PgListener(self._pg.conninfo, hub, telemetry=telemetry)

    def notify_statement(self, kind: str, tenant_id: str, session_id: str) -> Statement:
        return Statement("SELECT pg_notify(?, ?)", (CHANNEL, payload(kind, tenant_id, session_id)))

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
    ) -> Statement:
        """One statement: the bump (fenced), the notification and the insert; one round trip.

        When the guard fails the ``UPDATE`` returns no row, so neither the notification nor the insert runs.
        ``dedup_sql`` is not used: an event id already in the log fails the insert on the unique index (see the
        module docstring), which rolls the whole statement back, the bump included.
        """
        rows = as_columns(count, values_sql, insert_params) if count > ARRAY_ROWS else None
        source, source_params = rows or (f"(VALUES {values_sql}) AS v", list(insert_params))
        sql = _fenced_append_sql(guard_sql, insert_sql, source)
        params = [
            count,
            tenant_id,
            session_id,
            *guard_params,
            CHANNEL,
            payload(EVENTS, tenant_id, session_id),
            *source_params,
        ]
        return Statement(sql, params, fetch=True)

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
    ) -> Statement:
        """One statement: the bump, the insert, the runnable mark and the notification; one round trip.

        An id already in the inbox fails the insert on the unique index, which rolls the whole statement back.
        """
        rows = as_columns(count, values_sql, insert_params) if count > ARRAY_ROWS else None
        source, source_params = rows or (f"(VALUES {values_sql}) AS v", list(insert_params))
        sql = _inbox_post_sql(live_sql, insert_sql, source, runnable_sql)
        params = [
            count,
            tenant_id,
            session_id,
            *source_params,
            *runnable_params,
            CHANNEL,
            payload(INBOX, tenant_id, session_id),
        ]
        return Statement(sql, params, fetch=True)

    def event_id_key(self, alias: str, id_sql: str) -> str:
        """The key with the tenant and the session as expressions no index matches (see the module docstring)."""
        return f"{alias}.tenant_id || '' = ? AND {alias}.session_id || '' = ? AND {alias}.event_id = {id_sql}"

    def event_ids_absent(
        self, table: str, tenant_id: str, session_id: str, event_ids: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """One lookup per id by :meth:`event_id_key`; the ids go in as one ``text[]`` parameter (one statement
        text for every number of ids). ``event_id IN (...)`` of several ids was costed as one index scan per id
        and could lose to a scan of the session's rows."""
        key = self.event_id_key("d", "d_ids.id")
        sql = (
            "NOT EXISTS (SELECT 1 FROM unnest(?::text[]) AS d_ids(id)"
            f" WHERE (SELECT 1 FROM {table} d WHERE {key}) IS NOT NULL)"
        )
        return sql, [list(event_ids), tenant_id, session_id]

    def event_id_rows(
        self, table: str, alias: str, tenant_id: str, session_id: str, event_ids: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """One lookup per id by :meth:`event_id_key` (a lateral subquery, not flattened: ``OFFSET 0``)."""
        key = self.event_id_key("d", "d_ids.id")
        sql = (
            "unnest(?::text[]) AS d_ids(id)"
            f" CROSS JOIN LATERAL (SELECT * FROM {table} d WHERE {key} OFFSET 0) AS {alias}"
        )
        return sql, [list(event_ids), tenant_id, session_id]


async def open_store_backend(settings: Settings) -> SqlStoreBackend:
    """Entry point of the "pg" store backend."""
    client = await open_postgres_client(settings)
    return SqlStoreBackend("pg", PostgresEngine(client))
