"""Value types the session ports share: lease grants, sandbox records, ``UNSET``, the live feed's shape."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final, Literal, Protocol

import attrs

from openma.models import Event

#: States of an inbox row.
INBOX_STATES: Final = ("pending", "promoted", "cancelled")
#: States of a model stream; every state but ``open`` is final.
STREAM_STATUSES: Final = ("open", "completed", "aborted", "interrupted")
FINAL_STREAM_STATUSES: Final = ("completed", "aborted", "interrupted")

#: What a wake-up is about: a session's event log or its inbox.
WakeKind = Literal["events", "inbox"]


@attrs.frozen
class LeaseGrant:
    """What taking a session's lease found and did."""

    #: The new epoch: every write of this holder passes it as ``fence``.
    epoch: int
    #: Who held the lease before and did not release it cleanly (``None`` after a clean release).
    previous_holder: str | None
    #: The session's status when the lease was taken.
    status: str


@attrs.frozen
class SandboxRecord:
    """What a session row remembers of its sandbox (see :meth:`SessionLease.record_sandbox`)."""

    #: The session's current lease epoch (a holder whose fence differs has lost the lease).
    lease_epoch: int
    #: The provider's id of the sandbox serving the session, if one is recorded.
    sandbox_id: str | None
    #: The latest workspace snapshot ref, as JSON (``key``, ``size``, ``sha256``, ``created_at``, ...).
    snapshot: dict[str, Any] | None


class Unset:
    """The type of :data:`UNSET`."""

    def __repr__(self) -> str:
        return "UNSET"


#: "Leave this field as it is" (``None`` would clear it).
UNSET: Final[Any] = Unset()


class StopSignal(Protocol):
    """Anything that says "stop now": an ``anyio.Event``, ``asyncio.Event`` or ``trio.Event``."""

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


class Wakeup(Protocol):
    """One armed wake-up: ``wait`` returns once something changed after it was armed (an ``anyio.Event``)."""

    async def wait(self) -> Any: ...


class EventFeed(Protocol):
    """A live tail of one session's log: an async iterator of :class:`~openma.models.Event` in seq order.

    ``after`` is the seq of the last event delivered; ``start`` reads the first page now (so ``NotFound`` or
    ``ResyncRequired`` is raised before a caller commits to streaming); ``next`` waits at most ``timeout``
    seconds (``None`` when nothing came) and ends early when ``stop`` is set; ``aclose`` ends the feed.
    """

    @property
    def after(self) -> int: ...

    def __aiter__(self) -> EventFeed: ...

    async def __anext__(self) -> Event: ...

    async def start(self) -> None: ...

    async def next(self, timeout: float | None = None, *, stop: StopSignal | None = None) -> Event | None: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> EventFeed: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
