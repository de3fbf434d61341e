"""The queryable telemetry dataset: every event as a row of ``telemetry_events``, on any SQL engine.

The Analytics-Engine shape: a few promoted columns that questions group by (``kind``, ``tenant_id``,
``session_id``, ``name``, ``outcome``, ``duration_ms``, ``at``), and the whole event, redacted, as JSON in
``fields``. ``name`` is the event's subject: the tool of ``tool.call``, the ``where`` of ``silent_catch``, the
model of ``model.call``, the ``action`` of a lifecycle event, the ``host`` of ``egress.request``.
``outcome`` is the event's ``outcome`` (or, for ``silent_catch``, its error ``code``).

* ``emit`` never blocks and never raises: it appends the event to a bounded in-memory buffer (thread-safe;
  the row, JSON and redaction included, is built when it is written); when the buffer is full the event is
  dropped and counted in :attr:`SqlTelemetry.dropped`.
* :meth:`SqlTelemetry.run` (started by the platform in its task group) writes the buffer in batches every
  ``interval`` seconds; :meth:`SqlTelemetry.flush` writes it now; :meth:`SqlTelemetry.aclose` stops the loop
  and writes what is left. A batch the database refuses is dropped and counted in ``write_failures`` (never
  retried forever, never reported through telemetry itself, which would loop).
* :meth:`SqlTelemetry.prune` deletes rows older than a cutoff, in batches.

:func:`configured_telemetry` builds the sinks ``OPENMA_TELEMETRY`` names for a platform.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus

from openma.adapters.telemetry import FanoutTelemetry, LoggingTelemetry, redact
from openma.core.clock import Clock, SystemClock, datetime_to_ms
from openma.core.ids import new_id
from openma.errors import ConfigError, InvalidInput
from openma.ports.backend import StoreBackend
from openma.ports.sql import SqlClient
from openma.ports.telemetry import NullTelemetry, Telemetry

__all__ = ["SqlTelemetry", "configured_telemetry"]

_NAME_FIELDS: Final = ("tool", "where", "model", "action", "host", "transition")
_COLUMNS: Final = "id, at, kind, tenant_id, session_id, name, outcome, duration_ms, fields"
_INSERT: Final = f"INSERT INTO telemetry_events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
MAX_TEXT: Final = 512
PRUNE_BATCH: Final = 1000


def _text(value: object) -> str | None:
    """A promoted text column: a string, cut, without NUL or lone surrogates (``None`` if not a string)."""
    if not isinstance(value, str):
        return None
    cleaned = value[:MAX_TEXT].replace("\x00", "")
    return cleaned.encode("utf-8", "replace").decode("utf-8")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


def row_of(kind: str, fields: dict[str, Any], at_ms: int) -> tuple[Any, ...]:
    """The ``telemetry_events`` row of one event (fields redacted; see the module docstring)."""
    name = next((fields[f] for f in _NAME_FIELDS if isinstance(fields.get(f), str)), None)
    outcome = fields.get("outcome")
    if outcome is None and kind == "silent_catch":
        outcome = fields.get("code")
    duration = fields.get("duration_ms", fields.get("latency_ms"))
    document = json.dumps(redact(fields), default=str, ensure_ascii=True, separators=(",", ":"))
    return (
        new_id("tel", now_ms=at_ms),
        at_ms,
        _text(kind) or "",
        _text(fields.get("tenant_id")),
        _text(fields.get("session_id")),
        _text(name),
        _text(outcome),
        _number(duration),
        document,
    )


class SqlTelemetry:
    """A :class:`~openma.ports.telemetry.Telemetry` sink writing to ``telemetry_events`` (see the module)."""

    def __init__(
        self,
        client: SqlClient,
        *,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        interval: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.clock = clock or SystemClock()
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.interval = interval
        self._buffer: deque[tuple[str, dict[str, Any], int]] = deque()
        self._lock = threading.Lock()
        self._flushing = anyio.Lock()
        self._scope: anyio.CancelScope | None = None
        self._closed = False
        #: Events not kept because the buffer was full (or the sink closed).
        self.dropped = 0
        #: Events lost because the database refused their batch.
        self.write_failures = 0
        #: The type (and code) of the last write failure, for a health check.
        self.last_error: str | None = None
        #: Events written.
        self.written = 0

    def __repr__(self) -> str:
        return f"SqlTelemetry(buffered={len(self._buffer)}, dropped={self.dropped})"

    def emit(self, kind: str, **fields: Any) -> None:
        try:
            now = self.clock.now_ms()
        except Exception:  # a broken clock: drop the event, never raise
            self.dropped += 1
            return
        with self._lock:
            if self._closed or len(self._buffer) >= self.max_buffer:
                self.dropped += 1
                return
            self._buffer.append((kind, fields, now))  # the row is built when it is written, off the caller's path

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _take(self) -> list[tuple[Any, ...]]:
        with self._lock:
            count = min(self.batch_size, len(self._buffer))
            events = [self._buffer.popleft() for _ in range(count)]
        rows = []
        for kind, fields, at_ms in events:
            try:
                rows.append(row_of(kind, fields, at_ms))
            except Exception:  # a field json cannot encode even with default=str: drop it, never raise
                self.dropped += 1
        return rows

    async def flush(self) -> int:
        """Write everything buffered now, in batches; how many events were written."""
        written = 0
        async with self._flushing:
            while True:
                if not self._buffer:
                    return written
                batch = self._take()
                if not batch:
                    continue
                try:
                    await self.client.executemany(_INSERT, batch)
                except Exception as exc:  # any failure: the loop runs in the platform's task group, it must live
                    self.write_failures += len(batch)
                    self.last_error = f"{type(exc).__name__}: {getattr(exc, 'code', '')}"
                    continue
                written += len(batch)
                self.written += len(batch)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flush every ``interval`` seconds until :meth:`aclose` (or cancellation)."""
        with anyio.CancelScope() as self._scope:
            task_status.started()
            while True:
                await anyio.sleep(self.interval)
                await self.flush()

    async def aclose(self) -> None:
        """Stop the flush loop and write what is buffered; later events are dropped."""
        if self._scope is not None:
            self._scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.flush()
        with self._lock:
            self._closed = True

    async def prune(self, older_than: datetime) -> int:
        """Delete the events recorded before ``older_than`` (timezone-aware); how many were deleted."""
        if not isinstance(older_than, datetime) or older_than.tzinfo is None:
            raise InvalidInput("older_than must be a timezone-aware datetime", field="older_than")
        cutoff = datetime_to_ms(older_than)
        total = 0
        while True:
            deleted = await self.client.execute(
                "DELETE FROM telemetry_events WHERE id IN"
                " (SELECT id FROM telemetry_events WHERE at < ? ORDER BY at LIMIT ?)",
                (cutoff, PRUNE_BATCH),
            )
            total += deleted
            if deleted < PRUNE_BATCH:
                return total


def configured_telemetry(settings: Any, backends: Mapping[str, StoreBackend]) -> tuple[Telemetry, SqlTelemetry | None]:
    """The sink ``settings.telemetry_sinks`` names (fanned out when several) and the SQL dataset among them.

    ``sql`` writes to the backend holding the ``telemetry`` store; one without ``telemetry_dataset()`` (not a
    SQL backend) is a ``ConfigError``. ``otel`` imports :mod:`openma.adapters.telemetry_otel` (the extra).
    """
    sinks: list[Telemetry] = []
    dataset: SqlTelemetry | None = None
    for name in settings.telemetry_sinks:
        if name == "log":
            sinks.append(LoggingTelemetry())
        elif name == "sql":
            backend = backends[settings.backend_for("telemetry")]
            make = getattr(backend, "telemetry_dataset", None)
            if make is None:
                raise ConfigError(
                    f"the {backend.name!r} backend holds no telemetry dataset; place the telemetry store on a SQL "
                    "backend or drop 'sql' from OPENMA_TELEMETRY",
                    field="telemetry_sinks",
                )
            dataset = make()
            sinks.append(dataset)
        elif name == "otel":
            from openma.adapters.telemetry_otel import OtelTelemetry

            sinks.append(OtelTelemetry())
    if not sinks:
        return NullTelemetry(), None
    return (sinks[0] if len(sinks) == 1 else FanoutTelemetry(sinks)), dataset
