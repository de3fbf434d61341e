"""OpenTelemetry traces and metrics from openma's telemetry events (the ``otel`` extra).

``OtelTelemetry(tracer_provider=None, meter_provider=None)`` uses the global providers unless given its own
(a host configures exporters, OTLP say, on those as usual). Events become:

**Spans** (one per event that carries a duration, ended when the event is emitted and started ``duration_ms``
before it; status ``ERROR`` when the outcome is not ``ok``): ``openma.turn`` (``turn``), ``openma.model.call``
(``model.call``), ``openma.tool.call`` (``tool.call``), ``openma.sandbox.exec`` (``sandbox.exec``),
``openma.egress.request`` (``egress.request``). Attributes are the event's scalar fields, redacted, under
``openma.<field>`` (the command of an exec is already masked and cut by the orchestrator).

**Metrics**: ``openma.turns`` (by ``stop_reason``, ``outcome``), ``openma.tool.calls`` (by ``tool``,
``outcome``), ``openma.model.tokens`` (by ``model``, ``direction`` = input | output), ``openma.sandbox.exec.time``
(seconds, by ``outcome``), ``openma.actors.active`` (an up-down counter fed by the actors' ``acquired`` and
``released`` lifecycle events), ``openma.egress.requests`` (by ``allowed``, ``status``), and
``openma.runnable.backlog``, an observable gauge whose value comes from callbacks a worker registers with
:meth:`OtelTelemetry.register_backlog` (``callback() -> int``: the runnable sessions it sees; the gauge
reports their sum, or nothing while none is registered).

``emit`` never raises: an event that cannot be turned into a span or a data point is dropped and counted in
``dropped``. Importing this module needs the ``opentelemetry-api`` package; openma itself imports it only
when ``OPENMA_TELEMETRY`` names ``otel`` or a host builds the sink.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from openma.adapters.telemetry import redact
from openma.errors import ConfigError

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError as exc:  # pragma: no cover (the otel extra is installed in CI)
    raise ConfigError("OpenTelemetry telemetry needs the otel extra: pip install 'openma[otel]'") from exc

__all__ = ["OtelTelemetry"]

#: Telemetry kind → span name.
SPANS: Final = {
    "turn": "openma.turn",
    "model.call": "openma.model.call",
    "tool.call": "openma.tool.call",
    "sandbox.exec": "openma.sandbox.exec",
    "egress.request": "openma.egress.request",
}
_OK: Final = frozenset({"ok", "completed", None})


def _attributes(fields: dict[str, Any]) -> dict[str, str | bool | int | float]:
    out: dict[str, str | bool | int | float] = {}
    for key, value in redact(fields).items():
        if isinstance(value, str | bool | int | float):
            out[f"openma.{key}"] = value
    return out


def _label(value: object) -> str:
    return value if isinstance(value, str) else str(value) if value is not None else ""


class OtelTelemetry:
    """A :class:`~openma.ports.telemetry.Telemetry` sink over OpenTelemetry (see the module docstring)."""

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        tracers = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        meters = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self.tracer = tracers.get_tracer("openma")
        meter = meters.get_meter("openma")
        self.turns = meter.create_counter("openma.turns", unit="{turn}", description="Turns run, by stop reason")
        self.tool_calls = meter.create_counter("openma.tool.calls", unit="{call}", description="Tool calls, by outcome")
        self.model_tokens = meter.create_counter("openma.model.tokens", unit="{token}", description="Model tokens")
        self.exec_time = meter.create_counter(
            "openma.sandbox.exec.time", unit="s", description="Seconds commands ran in sandboxes"
        )
        self.active_actors = meter.create_up_down_counter(
            "openma.actors.active", unit="{actor}", description="Session actors held in this process"
        )
        self.egress_requests = meter.create_counter(
            "openma.egress.requests", unit="{request}", description="Requests through the egress proxy"
        )
        self._backlog: list[Callable[[], int]] = []
        meter.create_observable_gauge(
            "openma.runnable.backlog",
            callbacks=[self._observe_backlog],
            unit="{session}",
            description="Runnable sessions waiting for a worker (from registered callbacks)",
        )
        #: Events that could not be turned into spans or data points.
        self.dropped = 0

    def __repr__(self) -> str:
        return f"OtelTelemetry(dropped={self.dropped})"

    def register_backlog(self, callback: Callable[[], int]) -> Callable[[], None]:
        """Feed ``openma.runnable.backlog`` from ``callback`` (called on each collection, so keep it cheap and
        non-blocking: return a count the worker keeps up to date). Returns a function that unregisters it."""
        self._backlog.append(callback)

        def unregister() -> None:
            if callback in self._backlog:
                self._backlog.remove(callback)

        return unregister

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self._backlog:
            return []
        total = 0
        for callback in list(self._backlog):
            try:
                total += int(callback())
            except Exception:  # a failing callback must not break the collection of every other metric
                self.dropped += 1
        return [Observation(total)]

    def emit(self, kind: str, **fields: Any) -> None:
        try:
            self._span(kind, fields)
            self._metrics(kind, fields)
        except Exception:  # telemetry must never break the caller
            self.dropped += 1

    def _span(self, kind: str, fields: dict[str, Any]) -> None:
        name = SPANS.get(kind)
        if name is None:
            return
        duration = fields.get("duration_ms", fields.get("latency_ms"))
        end = time.time_ns()
        start = end - int(float(duration) * 1_000_000) if isinstance(duration, int | float) and duration > 0 else end
        span = self.tracer.start_span(name, start_time=start, attributes=_attributes(fields))
        outcome = fields.get("outcome")
        if outcome not in _OK:
            span.set_status(trace.Status(trace.StatusCode.ERROR, _label(outcome)))
        span.end(end_time=end)

    def _metrics(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "turn":
            self.turns.add(
                1, {"stop_reason": _label(fields.get("stop_reason")), "outcome": _label(fields.get("outcome"))}
            )
        elif kind == "tool.call":
            self.tool_calls.add(1, {"tool": _label(fields.get("tool")), "outcome": _label(fields.get("outcome"))})
        elif kind == "model.call":
            model = _label(fields.get("model"))
            for direction in ("input", "output"):
                count = fields.get(f"{direction}_tokens")
                if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                    self.model_tokens.add(count, {"model": model, "direction": direction})
        elif kind == "sandbox.exec":
            duration = fields.get("duration_ms")
            if isinstance(duration, int | float) and not isinstance(duration, bool) and duration > 0:
                self.exec_time.add(duration / 1000, {"outcome": _label(fields.get("outcome"))})
        elif kind == "session.lifecycle" and fields.get("action") in ("acquired", "released"):
            self.active_actors.add(1 if fields["action"] == "acquired" else -1)
        elif kind == "egress.request":
            self.egress_requests.add(
                1, {"allowed": bool(fields.get("allowed")), "status": _label(fields.get("status"))}
            )
