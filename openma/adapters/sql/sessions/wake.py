"""The :class:`~openma.ports.sessions.SessionWakeups` port over the backend's shared SQL wake-ups."""

from __future__ import annotations

from openma.adapters.sql.sessions._engine_bits import KIND_CODES
from openma.adapters.sql.sessions.context import SessionPart
from openma.ports.sessions import WakeKind, Wakeup


class SqlWakeups(SessionPart):
    """Arming starts the cross-process listener (where the engine has one) before it arms, so the first
    follower of a process never misses another process's write made while it read."""

    def arm(self, session_id: str, kind: WakeKind) -> Wakeup:
        wakeups = self._ctx.wakeups
        wakeups.start()
        return wakeups.hub.arm((KIND_CODES[kind], self.tenant_id, session_id))

    def poll_timeout(self) -> float:
        return self._ctx.wakeups.wait_timeout()
