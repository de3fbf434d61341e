"""Wake-ups for the SQL family's sessions: one per backend, shared by every tenant's store.

In-process, a write wakes followers through the :class:`~openma.core.tail.WakeHub` right after it commits.
Across processes, the engine decides (:class:`~openma.adapters.sql.engine.SqlEngine`): an engine with a
wake-up channel has writers run its :meth:`notify_statement` inside the write unit and a listener feed the
hub (Postgres: ``NOTIFY`` and a ``LISTEN`` connection); an engine without one (SQLite) leaves followers to
re-read every ``poll_interval``. With a healthy listener a follower still re-reads every ``push_timeout``
seconds, a cheap guard against anything missed.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

from openma.adapters.sql.engine import SqlEngine, WakeupChannel, engine_of
from openma.core.tail import WakeHub
from openma.ports.sql import SqlClient, Statement
from openma.ports.telemetry import NullTelemetry, Telemetry

DEFAULT_POLL_INTERVAL: Final = 0.2
PUSH_TIMEOUT: Final = 10.0
#: Wake-up kinds: the log of a session grew, or its inbox did, or its wake-up schedule changed.
EVENTS: Final = "e"
INBOX: Final = "i"
SCHEDULE: Final = "w"
#: The hub key set by every inbox post and schedule change of any session (what idle workers wait on).
ANY_WORK: Final = ("*work*",)


class KindHub(WakeHub):
    """A :class:`WakeHub` that also sets :data:`ANY_WORK` when any session's inbox or schedule changes."""

    def notify(self, key: Hashable) -> None:
        super().notify(key)
        if isinstance(key, tuple) and key and key[0] in (INBOX, SCHEDULE):
            super().notify(ANY_WORK)


class SessionWakeups:
    """The wake-up hub of one backend, and its engine's cross-process channel (started on demand).

    ``source`` is the backend's engine (a built-in engine's client is accepted too and bound to its engine).
    """

    def __init__(self, source: SqlEngine | SqlClient, *, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.engine = engine_of(source)
        self.hub: WakeHub = KindHub()
        self.poll_interval = poll_interval
        self._listener: WakeupChannel | None = None
        self._no_channel = False
        self._closed = False
        #: Where the listener reports lost connections (``silent_catch``).
        self.telemetry: Telemetry = NullTelemetry()

    def __repr__(self) -> str:
        return f"SessionWakeups({self.engine!r}, listener={self._listener!r})"

    @property
    def listener(self) -> WakeupChannel | None:
        """The running cross-process channel, if the engine has one and it was started."""
        return self._listener

    def start(self) -> None:
        """Begin listening for other processes' writes (a no-op for an engine without a channel). Idempotent."""
        if self._listener is not None or self._no_channel or self._closed:
            return
        channel = self.engine.wakeup_channel(self.hub, self.telemetry)
        if channel is None:
            self._no_channel = True
            return
        self._listener = channel
        channel.start()

    def wait_timeout(self) -> float:
        """How long a follower waits before re-reading on its own."""
        if self._listener is not None and self._listener.healthy:
            return max(PUSH_TIMEOUT, self.poll_interval)
        return self.poll_interval

    def notify_statement(self, kind: str, tenant_id: str, session_id: str) -> Statement | None:
        """The statement that tells other processes, inside the write unit (``None`` without a channel)."""
        return self.engine.notify_statement(kind, tenant_id, session_id)

    def notify_local(self, kind: str, tenant_id: str, session_id: str) -> None:
        """Wake this process's followers of ``kind`` for the session (after the write committed)."""
        self.hub.notify((kind, tenant_id, session_id))

    async def aclose(self) -> None:
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.aclose()
