"""The session status state machine: which transitions exist and which event each one logs.

``terminated`` is final. A transition is applied with a conditional update
(``WHERE status IN (sources_for(target))``) in the same write unit as its ``session.status_*`` event, so two
racing transitions cannot both win and a status never changes without its event.
"""

from __future__ import annotations

from typing import Final, Literal

from openma.errors import Conflict, InvalidInput

Status = Literal["idle", "running", "rescheduling", "terminated"]

STATUSES: Final[tuple[Status, ...]] = ("idle", "running", "rescheduling", "terminated")

#: target status → the statuses it may be entered from.
_SOURCES: Final[dict[str, tuple[Status, ...]]] = {
    "running": ("idle", "rescheduling"),
    "rescheduling": ("running",),
    "idle": ("running", "rescheduling"),
    "terminated": ("idle", "running", "rescheduling"),
}

#: The event each transition appends.
STATUS_EVENT: Final[dict[str, str]] = {
    "running": "session.status_running",
    "rescheduling": "session.status_rescheduled",
    "idle": "session.status_idle",
    "terminated": "session.status_terminated",
}


def check_status(value: object) -> Status:
    if value not in STATUSES:
        raise InvalidInput(f"unknown session status {value!r}; valid: {', '.join(STATUSES)}", field="status")
    return value


def sources_for(target: Status) -> tuple[Status, ...]:
    """The statuses from which ``target`` can be entered (for ``WHERE status IN (...)``)."""
    check_status(target)
    return _SOURCES[target]


def check_transition(current: Status, target: Status) -> None:
    """Raise :class:`Conflict` unless ``current → target`` is a valid transition."""
    check_status(current)
    check_status(target)
    if current == "terminated":
        raise Conflict("the session is terminated; terminated is final", status=current, target=target)
    if current not in _SOURCES[target]:
        raise Conflict(
            f"a session cannot go from {current!r} to {target!r}; {target!r} is entered from "
            f"{', '.join(_SOURCES[target])}",
            status=current,
            target=target,
        )
