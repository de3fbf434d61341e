"""Scheduled wake-ups of a session (the original platform's alarms and schedules), over the store's ports.

``t.sessions.schedule_wakeup(session_id, at=... | delay=... | every=... | cron=..., prompt=...)`` stores a
wake-up durably and logs ``span.wakeup_scheduled`` (``schedule_id``, ``fire_at``, ``kind``, ``cron``,
``every``). A worker fires due wake-ups (:func:`fire`):

1. it posts a ``user.message`` carrying the wake-up's ``prompt`` and ``metadata {harness: "schedule", kind:
   "wakeup", wakeup_kind, schedule_id, scheduled_at, fired_at}``, whose event id is derived from the wake-up
   and the due time, so every attempt to fire one due time is the same input (the inbox dedupes it); the
   post marks the session runnable, and the turn sees why it woke;
2. it claims the due time by moving ``next_due`` with a conditional update (``WHERE next_due = <due>``):
   one worker wins; the others' posts were the same input and wrote nothing.

After downtime a repeating wake-up fires **once** for everything it missed: its next due time is the first
one after now (``every``: the next step of its grid from the first due time; ``cron``: the expression's next
time after now), never a burst of catch-up firings. A one-shot (``at`` or ``delay``) is removed when it fires.
A wake-up of a session that no longer takes input (terminated, archived, deleted) is removed instead.

Cron expressions are read with ``croniter`` (``pip install croniter``), imported only when one is used.
"""

from __future__ import annotations

import importlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from openma.core.clock import datetime_to_ms, ms_to_datetime
from openma.core.ids import check_id, derived_id
from openma.errors import ConfigError, Conflict, InvalidInput, NotFound
from openma.ports.sessions import SessionStore
from openma.ports.sessions.runnable import ScheduledWakeup, WakeupKind

#: The shortest interval of a repeating wake-up, and the longest delay of any (ten years).
MIN_EVERY: Final = 1.0
MAX_SECONDS: Final = 10 * 365 * 86400.0
MAX_PROMPT: Final = 10_000
DEFAULT_PROMPT: Final = "Scheduled wake-up."


def _seconds(value: object, what: str, *, minimum: float) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a number of seconds or a timedelta", field=what)
    if not minimum <= value <= MAX_SECONDS:
        raise InvalidInput(f"{what} must be between {minimum} and {MAX_SECONDS:.0f} seconds", field=what)
    return float(value)


def _aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{what} must be an aware datetime (UTC)", field=what)
    try:
        datetime_to_ms(value)
    except (OverflowError, OSError, ValueError):
        raise InvalidInput(f"{what} is out of range", field=what) from None
    return value.astimezone(UTC)


def cron_next(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``expression`` names (UTC)."""
    try:
        croniter = importlib.import_module("croniter").croniter
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("cron wake-ups need croniter: pip install croniter") from None
    try:
        nxt = croniter(expression, after.astimezone(UTC)).get_next(datetime)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"cron expression {expression!r} is not valid: {exc}", field="cron") from None
    assert isinstance(nxt, datetime)
    return nxt.astimezone(UTC) if nxt.tzinfo is not None else nxt.replace(tzinfo=UTC)


def plan(
    now: datetime,
    *,
    at: datetime | None = None,
    delay: float | timedelta | None = None,
    every: float | timedelta | None = None,
    cron: str | None = None,
) -> tuple[WakeupKind, datetime, float | None, str | None]:
    """Check a schedule: (kind, first due time, interval seconds, cron). ``at`` may start an ``every``."""
    if sum(x is not None for x in (delay, every, cron)) > 1 or (at is not None and (delay is not None or cron)):
        raise InvalidInput("give one of at=, delay=, every= (optionally with at= as its first time) or cron=")
    if every is not None:
        step = _seconds(every, "every", minimum=MIN_EVERY)
        first = _aware(at, "at") if at is not None else now + timedelta(seconds=step)
        return "every", first, step, None
    if cron is not None:
        if not isinstance(cron, str) or not cron.strip() or len(cron) > 200:
            raise InvalidInput("cron must be a cron expression", field="cron")
        return "cron", cron_next(cron, now), None, cron
    if delay is not None:
        return "at", now + timedelta(seconds=_seconds(delay, "delay", minimum=0.0)), None, None
    if at is not None:
        return "at", _aware(at, "at"), None, None
    raise InvalidInput("give one of at=, delay=, every= or cron=")


def next_due(wakeup: ScheduledWakeup, now: datetime) -> datetime | None:
    """When ``wakeup`` falls due after firing at ``now``: the first time after ``now`` (``None``: a one-shot)."""
    if wakeup.kind == "every" and wakeup.every is not None:
        step_ms = round(wakeup.every * 1000)
        due_ms, now_ms = datetime_to_ms(wakeup.next_due), datetime_to_ms(now)
        missed = max(0, (now_ms - due_ms) // step_ms + 1)
        return ms_to_datetime(due_ms + missed * step_ms)
    if wakeup.kind == "cron" and wakeup.cron is not None:
        return cron_next(wakeup.cron, max(now, wakeup.next_due))
    return None


def fired_event_id(wakeup: ScheduledWakeup) -> str:
    """The inbox event id of firing ``wakeup`` at its current due time (the same for every attempt)."""
    return derived_id("evt", "wakeup", wakeup.tenant_id, wakeup.session_id, wakeup.id, wakeup.next_due.isoformat())


def wakeup_message(wakeup: ScheduledWakeup, now: datetime) -> dict[str, Any]:
    """The ``user.message`` that firing ``wakeup`` posts."""
    return {
        "type": "user.message",
        "id": fired_event_id(wakeup),
        "content": [{"type": "text", "text": wakeup.prompt}],
        "metadata": {
            "harness": "schedule",
            "kind": "wakeup",
            "wakeup_kind": wakeup.kind,
            "schedule_id": wakeup.id,
            "scheduled_at": wakeup.next_due.isoformat(),
            "fired_at": now.isoformat(),
        },
    }


async def schedule(
    store: SessionStore,
    session_id: str,
    *,
    now: datetime,
    at: datetime | None = None,
    delay: float | timedelta | None = None,
    every: float | timedelta | None = None,
    cron: str | None = None,
    prompt: str | None = None,
) -> ScheduledWakeup:
    """Store a wake-up and log ``span.wakeup_scheduled`` (see the module docstring)."""
    check_id(session_id, "ses", what="session_id")
    kind, first, step, expression = plan(now, at=at, delay=delay, every=every, cron=cron)
    text = DEFAULT_PROMPT if prompt is None else prompt
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_PROMPT:
        raise InvalidInput(f"prompt must be a non-empty string of at most {MAX_PROMPT} characters", field="prompt")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("prompt is not valid Unicode (lone surrogate)", field="prompt") from None
    wakeup = await store.add_wakeup(session_id, kind=kind, next_due=first, every=step, cron=expression, prompt=text)
    span = {
        "type": "span.wakeup_scheduled",
        "id": derived_id("evt", "wakeup_scheduled", wakeup.tenant_id, session_id, wakeup.id),
        "schedule_id": wakeup.id,
        "fire_at": wakeup.next_due.isoformat(),
        "kind": kind,
        "cron": expression,
        "every": step,
    }
    await store.append(session_id, [span])
    return wakeup


async def fire(store: SessionStore, wakeup: ScheduledWakeup, now: datetime) -> bool:
    """Fire ``wakeup`` (due at ``now``): post its message, then claim its due time. True for the one caller
    that claimed it; False if another did, or the session takes no input any more (the wake-up is removed)."""
    try:
        await store.post(wakeup.session_id, [wakeup_message(wakeup, now)])
    except (Conflict, NotFound) as exc:
        if isinstance(exc, Conflict):
            session = await store.get(wakeup.session_id)
            if session.status != "terminated" and session.archived_at is None:
                raise  # a transient refusal: the wake-up stays due, the next pass retries it
        try:
            await store.cancel_wakeup(wakeup.session_id, wakeup.id)
        except NotFound:
            pass
        return False
    return await store.advance_wakeup(wakeup.session_id, wakeup.id, due=wakeup.next_due, next_due=next_due(wakeup, now))
