"""The ``SessionWakeups`` port: "this session's log (or inbox) may have changed", with a poll fallback."""

from __future__ import annotations

from typing import Protocol

from openma.ports.sessions.values import WakeKind, Wakeup


class SessionWakeups(Protocol):
    """Wake-ups carry no data: a woken follower re-reads. ``arm`` returns the wake-up the next change of
    ``kind`` for ``session_id`` (in this process or, where the engine can tell, another) sets; arm it
    *before* the read it guards. ``poll_timeout`` bounds every wait, so a lost wake-up delays, never loses."""

    def arm(self, session_id: str, kind: WakeKind) -> Wakeup: ...

    def poll_timeout(self) -> float: ...
