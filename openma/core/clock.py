"""Time: UTC, integer milliseconds in storage, ``datetime`` at the API."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Where "now" comes from; tests inject a manual clock."""

    def now_ms(self) -> int: ...


class SystemClock:
    """Wall-clock time in Unix milliseconds."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def __repr__(self) -> str:
        return "SystemClock()"


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass an aware datetime (UTC)")
    return int(value.timestamp() * 1000)
