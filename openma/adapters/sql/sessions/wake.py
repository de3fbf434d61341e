"""The :class:`~openma.ports.sessions.SessionWakeups` port over the backend's shared SQL wake-ups."""

from __future__ import annotations

from typing import Final

from openma.adapters.sql.sessions.context import SessionPart
from openma.adapters.sql.wakeups import EVENTS, INBOX
from openma.ports.sessions import WakeKind, Wakeup

#: The notification kind of each wake-up kind of the port.
KIND_CODES: Final[dict[WakeKind, str]] = {"events": EVENTS, "inbox": INBOX}


class SqlWakeups(SessionPart):
    """Arming starts the cross-process listener (where the engine has one) before it arms, so the first
    follower of a process never misses another process's write made while it read."""

    def arm(self, session_id: str, kind: WakeKind) -> Wakeup:
        wakeups = self._ctx.wakeups
        wakeups.start()
        return wakeups.hub.arm((KIND_CODES[kind], self.tenant_id, session_id))

    def poll_timeout(self) -> float:
        return self._ctx.wakeups.wait_timeout()
