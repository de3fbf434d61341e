"""The session state machine and the telemetry sinks."""

from __future__ import annotations

import json
import logging

import pytest

from openma import Conflict, InvalidInput
from openma.adapters.telemetry import FanoutTelemetry, LoggingTelemetry, MemoryTelemetry, NullTelemetry, redact
from openma.core.lifecycle import STATUS_EVENT, STATUSES, check_transition, sources_for

VALID = {
    ("idle", "running"),
    ("idle", "terminated"),
    ("running", "idle"),
    ("running", "rescheduling"),
    ("running", "terminated"),
    ("rescheduling", "running"),
    ("rescheduling", "idle"),
    ("rescheduling", "terminated"),
}


@pytest.mark.parametrize("current", STATUSES)
@pytest.mark.parametrize("target", STATUSES)
def test_transition_table(current: str, target: str) -> None:
    if (current, target) in VALID:
        check_transition(current, target)  # type: ignore[arg-type]
        assert current in sources_for(target)  # type: ignore[arg-type]
    else:
        with pytest.raises(Conflict):
            check_transition(current, target)  # type: ignore[arg-type]


def test_terminated_is_final_and_every_status_has_an_event() -> None:
    assert all("terminated" not in sources_for(t) for t in STATUSES if t != "terminated")
    assert set(STATUS_EVENT) == {"idle", "running", "rescheduling", "terminated"}
    with pytest.raises(InvalidInput):
        check_transition("idle", "paused")  # type: ignore[arg-type]


def test_memory_sink_redacts_secretish_fields() -> None:
    sink = MemoryTelemetry()
    sink.emit("tool.call", tool="bash", outcome="ok", env={"API_TOKEN": "abc", "HOME": "/root"}, password="x")
    fields = sink.of("tool.call")[0]
    assert fields["env"] == {"API_TOKEN": "***", "HOME": "/root"} and fields["password"] == "***"
    assert redact([{"Authorization": "Bearer x"}]) == [{"Authorization": "***"}]


def test_logging_sink_writes_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="openma.telemetry"):
        LoggingTelemetry().emit("recovery", session_id="ses_x", secret_value="hunter2", n=2)
    line = json.loads(caplog.records[0].getMessage())
    assert line["kind"] == "recovery" and line["n"] == 2 and line["secret_value"] == "***"
    assert "hunter2" not in caplog.text


def test_fanout_survives_a_broken_sink() -> None:
    class Broken:
        def emit(self, kind: str, **fields: object) -> None:
            raise RuntimeError("sink down")

    memory = MemoryTelemetry()
    FanoutTelemetry([Broken(), NullTelemetry(), memory]).emit("session.lifecycle", to="running")
    assert memory.of("session.lifecycle") == [{"to": "running"}]
