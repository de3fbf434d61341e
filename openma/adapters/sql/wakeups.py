"""Wake-ups for the SQL family's sessions: one per backend, shared by every tenant's store.

In-process, a write wakes followers through the :class:`~openma.core.tail.WakeHub` right after it commits.
Across processes, Postgres writers also ``pg_notify`` inside the write unit and a
:class:`~openma.adapters.pg_notify.PgListener` feeds the hub; SQLite has no such channel, so followers
re-read every ``poll_interval``. With a healthy listener a follower still re-reads every ``push_timeout``
seconds, a cheap guard against anything missed.
"""

from __future__ import annotations

from typing import Final

from openma.adapters import pg_notify
from openma.core.tail import WakeHub
from openma.ports.sql import SqlClient, Statement
from openma.ports.telemetry import NullTelemetry, Telemetry

DEFAULT_POLL_INTERVAL: Final = 0.2
PUSH_TIMEOUT: Final = 10.0


class SessionWakeups:
    def __init__(self, client: SqlClient, *, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.hub = WakeHub()
        self.poll_interval = poll_interval
        self._postgres = client.dialect.name == "postgres"
        self._conninfo = pg_notify.conninfo_of(client) if self._postgres else None
        self._listener: pg_notify.PgListener | None = None
        self._closed = False
        #: Where the listener reports lost connections (``silent_catch``).
        self.telemetry: Telemetry = NullTelemetry()

    def __repr__(self) -> str:
        return f"SessionWakeups(postgres={self._postgres}, listener={self._listener!r})"

    @property
    def listener(self) -> pg_notify.PgListener | None:
        return self._listener

    def start(self) -> None:
        """Begin listening for other processes' writes (Postgres; a no-op elsewhere). Idempotent."""
        if self._conninfo is not None and self._listener is None and not self._closed:
            self._listener = pg_notify.PgListener(self._conninfo, self.hub, telemetry=self.telemetry)
            self._listener.start()

    def wait_timeout(self) -> float:
        if self._listener is not None and self._listener.healthy:
            return max(PUSH_TIMEOUT, self.poll_interval)
        return self.poll_interval

    def notify_statement(self, kind: str, tenant_id: str, session_id: str) -> Statement | None:
        """The statement that tells other processes, inside the write unit (``None`` on SQLite)."""
        if not self._postgres:
            return None
        return Statement("SELECT pg_notify(?, ?)", (pg_notify.CHANNEL, pg_notify.payload(kind, tenant_id, session_id)))

    def notify_local(self, kind: str, tenant_id: str, session_id: str) -> None:
        self.hub.notify((kind, tenant_id, session_id))

    async def aclose(self) -> None:
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.aclose()
