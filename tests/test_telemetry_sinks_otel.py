"""The OpenTelemetry sink, checked with the SDK's in-memory span exporter and metric reader: a real turn with
a tool in a real sandbox gives its spans and metrics; the backlog gauge follows registered callbacks; openma
imports without the extra."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from openma import Platform
from openma.adapters.telemetry_otel import OtelTelemetry
from openma.testing import ScriptedModel
from tests.turn_support import engine_settings, text, tool_use

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Otel:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.sink = OtelTelemetry(
            tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[self.reader])
        )

    def points(self, name: str) -> list[tuple[dict[str, Any], float]]:
        """``(attributes, value)`` of every data point of metric ``name`` collected now."""
        data = self.reader.get_metrics_data()
        out: list[tuple[dict[str, Any], float]] = []
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        out += [(dict(p.attributes or {}), p.value) for p in metric.data.data_points]  # type: ignore[union-attr]
        return out


@pytest.fixture
def otel() -> Otel:
    return Otel()


@pytest.fixture
async def oma(engine: str, tmp_path: Path, request: pytest.FixtureRequest, otel: Otel) -> AsyncIterator[Platform]:
    async with Platform.open(engine_settings(engine, tmp_path, request), telemetry=otel.sink) as platform:
        yield platform


async def test_a_turn_gives_spans_and_metrics(oma: Platform, otel: Otel) -> None:
    tenant = await oma.tenants.create(name="otel")
    t = oma.tenant(tenant.id)
    agent = await t.agents.create(name="a", model="m-1", tools=[{"type": "agent_toolset_20260401"}])
    env = await t.environments.create(name="py")
    session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
    await t.sessions.post(session.id, [{"type": "user.message", "content": [text("go")]}])
    model = ScriptedModel(
        [
            [
                tool_use("bash", {"command": "sleep 0.1; echo ok"}, id="t1"),
                tool_use("bash", {"command": "exit 4"}, id="t2"),
            ],
            [text("done")],
        ]
    )
    result = await t.sessions.run(session.id, model=model)
    assert result.stop_reason == "end_turn"

    spans = otel.spans.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count("openma.turn") == 1
    assert names.count("openma.model.call") == 2
    assert names.count("openma.sandbox.exec") == 2
    assert names.count("openma.tool.call") >= 2
    turn = next(s for s in spans if s.name == "openma.turn")
    assert turn.attributes is not None and turn.attributes["openma.session_id"] == session.id
    assert turn.attributes["openma.stop_reason"] == "end_turn"
    assert turn.end_time is not None and turn.start_time is not None and turn.end_time > turn.start_time
    execs = sorted((s for s in spans if s.name == "openma.sandbox.exec"), key=lambda s: s.start_time or 0)
    slow = next(s for s in execs if s.attributes and s.attributes.get("openma.exit_code") == 0)
    assert (slow.end_time or 0) - (slow.start_time or 0) >= 100_000_000  # the command's own 0.1 s
    failed = next(s for s in execs if s.attributes and s.attributes.get("openma.exit_code") == 4)
    assert failed.status.status_code == StatusCode.ERROR

    assert otel.points("openma.turns") == [({"stop_reason": "end_turn", "outcome": "ok"}, 1)]
    tools = {(a["tool"], a["outcome"]): v for a, v in otel.points("openma.tool.calls")}
    assert tools[("bash", "ok")] >= 1 and sum(v for (_, o), v in tools.items() if o != "ok") >= 1
    tokens = {(a["model"], a["direction"]): v for a, v in otel.points("openma.model.tokens")}
    assert tokens[("m-1", "input")] == result.usage.input_tokens
    assert tokens[("m-1", "output")] == result.usage.output_tokens
    assert sum(v for _, v in otel.points("openma.sandbox.exec.time")) >= 0.1
    assert [v for _, v in otel.points("openma.actors.active")] == [0]  # acquired, then released


def test_egress_backlog_and_hostile_events(otel: Otel) -> None:
    sink = otel.sink
    sink.emit("egress.request", host="api.github.com", allowed=True, injected=True, status=200, duration_ms=12.5)
    sink.emit("egress.request", host="evil.example", allowed=False, status=403, duration_ms=0.3)
    assert sorted((a["allowed"], a["status"], v) for a, v in otel.points("openma.egress.requests")) == [
        (False, "403", 1),
        (True, "200", 1),
    ]
    span = next(s for s in otel.spans.get_finished_spans() if s.name == "openma.egress.request")
    assert span.attributes is not None and span.attributes["openma.host"] == "api.github.com"

    assert otel.points("openma.runnable.backlog") == []  # nothing registered: no data point
    counts = {"a": 7}
    unregister = sink.register_backlog(lambda: counts["a"])
    sink.register_backlog(lambda: 5)
    assert [v for _, v in otel.points("openma.runnable.backlog")] == [12]
    counts["a"] = 1
    unregister()
    assert [v for _, v in otel.points("openma.runnable.backlog")] == [5]

    sink.register_backlog(lambda: 1 // 0)  # a failing callback is counted, the gauge still reports the rest
    assert [v for _, v in otel.points("openma.runnable.backlog")] == [5]
    before = sink.dropped
    sink.emit("tool.call", tool=object(), outcome=None, duration_ms=float("nan"))
    sink.emit("sandbox.exec", duration_ms="slow", token="sk-secret")
    sink.emit("model.call", model="m", input_tokens=True, output_tokens=-3)
    sink.emit("unknown.kind", anything=[1, 2])
    secret_spans = [s for s in otel.spans.get_finished_spans() if s.attributes and "openma.token" in s.attributes]
    assert all(s.attributes and s.attributes["openma.token"] == "***" for s in secret_spans)
    assert sink.dropped >= before


def test_openma_imports_without_the_otel_extra(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import openma, openma.platform, openma.adapters.telemetry_sql\n"
        "openma.Settings(telemetry_sinks='otel')\n"
        "try:\n"
        "    import openma.adapters.telemetry_otel\n"
        "except openma.ConfigError as exc:\n"
        '    assert "openma[otel]" in str(exc), exc\n'
        "    print('config-error')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "config-error"
