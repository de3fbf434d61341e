"""The usage ledger's logic: slices read from a session's log, the sandbox meter, checks and cursors.

* :func:`slices_from_events` derives slices from logged events only: tokens per model call from
  ``span.model_request_end`` (its ``model_usage``), and session running time from each
  ``session.status_running`` to the ``session.status_idle`` / ``status_rescheduled`` / ``status_terminated``
  that ended it. The keys come from the event ids, so recording the same events again is a no-op, whoever
  does it (the turn that logged them, a backfill, a retry).
* :class:`SandboxMeter` is fed by the sandbox orchestrator: a sandbox's alive time is measured from when this
  process got it (created or reattached) to when it let it go (destroyed, detached, found gone), in periods
  closed at each checkpoint, and the seconds its commands ran (``sandbox.exec`` durations) are summed over the
  same periods. Alive time is what providers bill; exec time is what the agent used. A period is keyed by
  its sandbox and start, so writing it again is a no-op; what a process had not yet written when it died is
  lost (at most one checkpoint interval).
* :class:`TenantUsage` is ``t.usage``: the tenant's :class:`~openma.ports.usage.UsageStore` plus
  ``record_events`` and ``backfill`` (re-derive a session's slices from its whole log).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from openma.core import validate
from openma.core.clock import ms_to_datetime
from openma.core.ids import check_id
from openma.core.pagination import Keyset, decode_cursor, encode_cursor, scope_of
from openma.errors import InvalidInput
from openma.models import Event
from openma.ports.usage import (
    USAGE_KINDS,
    UsageExport,
    UsageSlice,
    UsageStore,
    UsageSummary,
)

__all__ = [
    "MAX_AMOUNT",
    "SandboxMeter",
    "TenantUsage",
    "check_consumer",
    "check_slice",
    "check_slices",
    "decode_export_cursor",
    "encode_export_cursor",
    "slices_from_events",
]

#: The largest amount (tokens, milliseconds) one slice may carry: sums of millions of slices stay in 64 bits.
MAX_AMOUNT: Final = 2**40
MAX_KEY: Final = 256
MAX_NAME: Final = 256
MAX_SLICES: Final = 1000
_ENDS: Final = ("session.status_idle", "session.status_rescheduled", "session.status_terminated")
#: The event types :func:`slices_from_events` reads (a backfill asks the log for these only).
USAGE_EVENT_TYPES: Final = ("span.model_request_end", "session.status_running", *_ENDS)
_AMOUNTS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "duration_ms")


def check_slice(value: object) -> UsageSlice:
    """``value`` if it is a well-formed :class:`UsageSlice`, else :class:`InvalidInput` naming the field."""
    if not isinstance(value, UsageSlice):
        raise InvalidInput(f"a usage slice must be a UsageSlice, got {type(value).__name__}", field="slices")
    validate.text(value.key, "key", max_len=MAX_KEY, min_len=1)
    check_id(value.session_id, "ses", what="session_id")
    validate.text(value.name, "name", max_len=MAX_NAME)
    if value.kind not in USAGE_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(USAGE_KINDS)}, got {value.kind!r}", field="kind")
    validate.time_bound(value.at, "at")
    for field in _AMOUNTS:
        validate.integer(getattr(value, field), field, maximum=MAX_AMOUNT)
    return value


def check_slices(slices: object) -> list[UsageSlice]:
    """The slices of one ``record`` call, checked, without repeated keys (the first of each key is kept)."""
    if isinstance(slices, str | bytes) or not isinstance(slices, Sequence):
        raise InvalidInput("slices must be a sequence of UsageSlice", field="slices")
    if len(slices) > MAX_SLICES:
        raise InvalidInput(f"at most {MAX_SLICES} slices per call, got {len(slices)}", field="slices")
    out: dict[str, UsageSlice] = {}
    for item in slices:
        checked = check_slice(item)
        out.setdefault(checked.key, checked)
    return list(out.values())


def _count(value: object) -> int:
    """A token count as logged: a non-negative integer (anything else counts as 0), capped."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, MAX_AMOUNT)


def slices_from_events(session_id: str, events: Iterable[Event]) -> list[UsageSlice]:
    """The slices ``events`` (of one session, oldest first) account for (see the module docstring)."""
    out: list[UsageSlice] = []
    running: Event | None = None
    for event in events:
        if event.type == "span.model_request_end":
            usage = event.data.get("model_usage")
            if not isinstance(usage, dict):
                continue
            counts = {
                "input_tokens": _count(usage.get("input_tokens")),
                "output_tokens": _count(usage.get("output_tokens")),
                "cache_read_tokens": _count(usage.get("cache_read_input_tokens")),
                "cache_write_tokens": _count(usage.get("cache_creation_input_tokens")),
            }
            if not any(counts.values()):
                continue
            model = event.data.get("model")
            name = model if isinstance(model, str) else ""
            out.append(
                UsageSlice(
                    key=f"model:{event.id}",
                    session_id=session_id,
                    kind="model",
                    at=event.created_at,
                    name=name[:MAX_NAME],
                    **counts,
                )
            )
        elif event.type == "session.status_running":
            running = running or event
        elif event.type in _ENDS and running is not None:
            ms = max(0, round((event.created_at - running.created_at).total_seconds() * 1000))
            out.append(
                UsageSlice(
                    key=f"session:{running.id}",
                    session_id=session_id,
                    kind="session",
                    at=running.created_at,
                    duration_ms=min(ms, MAX_AMOUNT),
                )
            )
            running = None
    return out


def encode_export_cursor(tenant_id: str, pos: int) -> str:
    return encode_cursor(scope_of("usage_export", tenant_id), Keyset(pos, "pos"))


def decode_export_cursor(tenant_id: str, cursor: object) -> int:
    """The position a cursor of this tenant's export stands at, or :class:`InvalidInput`."""
    return decode_cursor(cursor, scope_of("usage_export", tenant_id)).created_at


def check_consumer(value: object) -> str:
    return validate.text(value, "consumer", max_len=MAX_NAME, min_len=1)


@attrs.define
class _Period:
    tenant_id: str
    session_id: str
    provider: str
    started_ms: int
    exec_ms: float = 0.0


class SandboxMeter:
    """Alive and exec time of the sandboxes one orchestrator holds, as slices waiting to be written.

    ``started``/``stopped`` are called as sandboxes come and go, ``ran`` for each command; ``checkpoint(now)``
    closes every open period at ``now`` (and reopens it there) so long-lived sandboxes are billed as they run.
    ``take()`` hands the closed periods' slices over, grouped by tenant; ``give_back`` returns those a write
    could not store (they are written again later, under the same keys).
    """

    MAX_PENDING: Final = 100_000

    def __init__(self) -> None:
        self._open: dict[str, _Period] = {}  # by sandbox id
        self._pending: dict[str, dict[str, UsageSlice]] = {}
        self.dropped = 0

    def started(self, tenant_id: str, session_id: str, sandbox_id: str, provider: str, now_ms: int) -> None:
        if sandbox_id not in self._open:
            self._open[sandbox_id] = _Period(tenant_id, session_id, provider, now_ms)

    def ran(self, sandbox_id: str, duration_ms: object) -> None:
        period = self._open.get(sandbox_id)
        if period is None or isinstance(duration_ms, bool) or not isinstance(duration_ms, int | float):
            return
        if math.isfinite(duration_ms) and duration_ms > 0:
            period.exec_ms += duration_ms

    def stopped(self, sandbox_id: str, now_ms: int) -> None:
        period = self._open.pop(sandbox_id, None)
        if period is not None:
            self._close(sandbox_id, period, now_ms)

    def checkpoint(self, now_ms: int) -> None:
        for sandbox_id, period in list(self._open.items()):
            if now_ms > period.started_ms:
                self._close(sandbox_id, period, now_ms)
                self._open[sandbox_id] = _Period(period.tenant_id, period.session_id, period.provider, now_ms)

    def _close(self, sandbox_id: str, period: _Period, now_ms: int) -> None:
        alive = min(max(0, now_ms - period.started_ms), MAX_AMOUNT)
        at = ms_to_datetime(period.started_ms)
        base: dict[str, Any] = {"session_id": period.session_id, "at": at, "name": period.provider[:MAX_NAME]}
        suffix = f"{sandbox_id}:{period.started_ms}"[: MAX_KEY - 8]
        slices = [UsageSlice(key=f"sandbox:{suffix}", kind="sandbox", duration_ms=alive, **base)]
        exec_ms = min(round(period.exec_ms), MAX_AMOUNT)
        if exec_ms:
            slices.append(UsageSlice(key=f"exec:{suffix}", kind="exec", duration_ms=exec_ms, **base))
        self.give_back(period.tenant_id, slices)

    def give_back(self, tenant_id: str, slices: Iterable[UsageSlice]) -> None:
        pending = self._pending.setdefault(tenant_id, {})
        size = sum(len(p) for p in self._pending.values())
        for item in slices:
            if size >= self.MAX_PENDING and item.key not in pending:
                self.dropped += 1
                continue
            size += item.key not in pending
            pending[item.key] = item

    def take(self) -> dict[str, list[UsageSlice]]:
        taken = {tenant: list(slices.values()) for tenant, slices in self._pending.items() if slices}
        self._pending = {}
        return taken

    @property
    def open_periods(self) -> int:
        return len(self._open)


#: Writes a tenant's slices (the platform binds it to ``t.usage.record``).
UsageRecorder = Callable[[str, Sequence[UsageSlice]], Awaitable[object]]
#: Reads the events of a session of one type set after a seq: ``(session_id, after, types) -> events``.
EventReader = Callable[[str, int, Sequence[str]], Awaitable[Sequence[Event]]]


class TenantUsage:
    """``t.usage``: the tenant's usage ledger (see :mod:`openma.ports.usage` for the store's contract)."""

    def __init__(self, store: UsageStore, read_events: EventReader | None = None) -> None:
        self.store = store
        self.tenant_id = store.tenant_id
        self._read_events = read_events

    def __repr__(self) -> str:
        return f"TenantUsage(tenant_id={self.tenant_id!r})"

    async def record(self, slices: Sequence[UsageSlice]) -> int:
        """Write the slices the ledger does not hold yet; how many were new (a retry never double-counts)."""
        return await self.store.record(slices)

    async def record_events(self, session_id: str, events: Iterable[Event]) -> int:
        """Record what ``events`` of ``session_id`` account for (see :func:`slices_from_events`)."""
        slices = slices_from_events(session_id, events)
        total = 0
        for start in range(0, len(slices), MAX_SLICES):
            total += await self.store.record(slices[start : start + MAX_SLICES])
        return total

    async def backfill(self, session_id: str) -> int:
        """Re-derive the session's slices from its whole retained log and record the missing ones.

        For a turn whose own recording failed, or one run without ``t.sessions.run``; a no-op otherwise.
        """
        if self._read_events is None:
            raise InvalidInput("this usage ledger has no sessions store to read from", field="session_id")
        events: list[Event] = []
        after = 0
        while True:
            page = await self._read_events(session_id, after, USAGE_EVENT_TYPES)
            events.extend(page)
            if not page:
                break
            after = page[-1].seq
        return await self.record_events(session_id, events)

    async def summary(
        self, *, since: datetime | None = None, until: datetime | None = None, session_id: str | None = None
    ) -> UsageSummary:
        """Totals per kind and name of the slices whose ``at`` is in ``[since, until)``."""
        return await self.store.summary(since=since, until=until, session_id=session_id)

    async def export(self, *, cursor: str | None = None, limit: int = 100, consumer: str = "default") -> UsageExport:
        """A page of slices in recording order, resuming after ``consumer``'s acknowledgement (at least once)."""
        return await self.store.export(cursor=cursor, limit=limit, consumer=consumer)

    async def ack(self, cursor: str, *, consumer: str = "default") -> None:
        """``consumer`` has everything up to ``cursor``; its next ``export()`` resumes there."""
        await self.store.ack(cursor, consumer=consumer)
