"""Every engine-specific bit of the SQL sessions store, in one place (the rest is portable SQL).

* :func:`is_postgres`: whether the client speaks Postgres (the only engine with a one-statement append).
* :func:`one_statement_append`: the Postgres fenced append as one data-modifying ``WITH`` (bump the counter,
  check the fence and the ids, ``pg_notify``, insert: one round trip).
* :data:`EVENTS` / :data:`INBOX`: the notification kinds (what changed), also the first part of a wake-up key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from openma.adapters import pg_notify
from openma.ports.sessions import WakeKind
from openma.ports.sql import SqlClient, Statement

#: Notification kinds: the log of a session grew, or its inbox did.
EVENTS: Final = pg_notify.EVENTS
INBOX: Final = pg_notify.INBOX
#: The notification kind of each wake-up kind of the port.
KIND_CODES: Final[dict[WakeKind, str]] = {"events": EVENTS, "inbox": INBOX}


def is_postgres(client: SqlClient) -> bool:
    return client.dialect.name == "postgres"


def one_statement_append(
    *,
    tenant_id: str,
    session_id: str,
    n: int,
    fence_sql: str,
    guard_params: Sequence[Any],
    insert_event: str,
    select: str,
    values: str,
    value_params: Sequence[Any],
    now: int,
) -> Statement:
    """The bump (fenced), the notification and the insert in one statement; one round trip."""
    sql = (
        "WITH s AS (UPDATE sessions SET last_seq = last_seq + ? WHERE tenant_id = ? AND id = ?"
        f" AND deleted_at IS NULL{fence_sql} RETURNING tenant_id, id, last_seq),"
        " w AS (SELECT pg_notify(?, ?) AS n FROM s) "
        f"{insert_event}{select} FROM s, w, (VALUES {values}) AS v RETURNING seq, event_id"
    )
    params = [
        n,
        tenant_id,
        session_id,
        *guard_params,
        pg_notify.CHANNEL,
        pg_notify.payload(EVENTS, tenant_id, session_id),
        n,
        now,
        *value_params,
    ]
    return Statement(sql, params, fetch=True)
