"""Telemetry sinks: JSON lines through stdlib ``logging``, in memory (tests), fan-out, and none."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, Final

import attrs

from openma.ports.telemetry import NullTelemetry, Telemetry

__all__ = ["FanoutTelemetry", "LoggingTelemetry", "MemoryTelemetry", "NullTelemetry", "TelemetryRecord", "redact"]

_SECRETISH: Final = re.compile(r"(secret|token|password|passwd|authorization|api_key|apikey|credential)", re.I)
MASK: Final = "***"


def redact(value: Any) -> Any:
    """Mask values under secret-looking keys, recursively (a second line of defence, not the first)."""
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _SECRETISH.search(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


@attrs.frozen
class TelemetryRecord:
    """One event a :class:`MemoryTelemetry` kept: its ``kind``, when (epoch ms), and its fields (redacted)."""

    kind: str
    at_ms: int
    fields: dict[str, Any]


class MemoryTelemetry:
    """Keeps every event in ``records``, fields redacted as the logging sink does; for tests and notebooks.

    Exported by :mod:`openma.testing`: ``Platform.open(settings, telemetry=MemoryTelemetry())``.
    """

    def __init__(self) -> None:
        self.records: list[TelemetryRecord] = []

    def __repr__(self) -> str:
        return f"MemoryTelemetry({len(self.records)} records)"

    def emit(self, kind: str, **fields: Any) -> None:
        self.records.append(TelemetryRecord(kind, time.time_ns() // 1_000_000, redact(fields)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The fields of every event of ``kind``, oldest first."""
        return [r.fields for r in self.records if r.kind == kind]


class LoggingTelemetry:
    """One JSON object per event on a stdlib logger (``openma.telemetry`` by default), at INFO."""

    def __init__(self, logger: logging.Logger | str = "openma.telemetry", level: int = logging.INFO) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def __repr__(self) -> str:
        return f"LoggingTelemetry({self.logger.name!r})"

    def emit(self, kind: str, **fields: Any) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        try:
            line = json.dumps(
                {"ts_ms": time.time_ns() // 1_000_000, "kind": kind, **redact(fields)},
                default=str,
                ensure_ascii=False,
                separators=(",", ":"),
            )
            self.logger.log(self.level, line)
        except Exception:  # telemetry must never break the caller
            return


class FanoutTelemetry:
    """Sends every event to several sinks; one failing sink does not stop the others."""

    def __init__(self, sinks: Iterable[Telemetry]) -> None:
        self.sinks = list(sinks)

    def __repr__(self) -> str:
        return f"FanoutTelemetry({self.sinks!r})"

    def emit(self, kind: str, **fields: Any) -> None:
        for sink in self.sinks:
            try:
                sink.emit(kind, **fields)
            except Exception:
                continue
