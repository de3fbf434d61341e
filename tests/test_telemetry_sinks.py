"""The SQL telemetry dataset on both engines (the two documented queries on real events, the bounded
buffer, hostile fields, the platform's background flush) and the ``OPENMA_TELEMETRY`` setting."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from openma import Platform, Settings
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.telemetry import FanoutTelemetry, LoggingTelemetry
from openma.adapters.telemetry_sql import SqlTelemetry
from openma.errors import ConfigError, InvalidInput
from openma.ports.telemetry import NullTelemetry
from openma.testing import ScriptedModel
from tests.turn_support import World, engine_settings, open_world, poll, text, tool_use

pytestmark = pytest.mark.anyio
HOUR = 3_600_000
T0 = 1_790_000_000_000 // HOUR * HOUR

#: "Are silent failures spiking?": silent failures per hour (and where), since a time. Kept word for word in
#: docs/telemetry.md.
SILENT_FAILURES_PER_HOUR = """
SELECT at / 3600000 * 3600000 AS hour_ms, COUNT(*) AS failures
FROM telemetry_events
WHERE kind = 'silent_catch' AND at >= ?
GROUP BY at / 3600000 * 3600000
ORDER BY hour_ms
"""
#: "Which tool errors most?": failed tool calls per tool, since a time. Kept word for word in docs/telemetry.md.
TOOL_ERRORS = """
SELECT name AS tool, COUNT(*) AS errors
FROM telemetry_events
WHERE kind = 'tool.call' AND outcome <> 'ok' AND at >= ?
GROUP BY name
ORDER BY errors DESC, tool
LIMIT 10
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now


def test_the_documented_queries_are_the_ones_tested() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "telemetry.md").read_text(encoding="utf-8")
    assert SILENT_FAILURES_PER_HOUR.strip() in doc
    assert TOOL_ERRORS.strip() in doc


async def test_the_two_questions_are_one_query_each(store_backend: SqlStoreBackend) -> None:
    clock = Clock(T0)
    sink = SqlTelemetry(store_backend.client, clock=clock, batch_size=7)
    for hour, failures in enumerate([2, 1, 9]):  # a spike in the third hour
        clock.now = T0 + hour * HOUR + 1000
        for i in range(failures):
            sink.emit("silent_catch", where=f"part.{i % 2}", error="StorageUnavailable", code="storage_unavailable")
    for tool, outcomes in {"bash": ["ok", "error", "error", "error"], "grep": ["error", "ok"], "read": ["ok"]}.items():
        for outcome in outcomes:
            sink.emit("tool.call", tenant_id="tnt_x", session_id="ses_x", tool=tool, outcome=outcome, duration_ms=3.5)
    sink.emit("tool.call", tool="write", outcome="interrupted", duration_ms=1)
    assert sink.buffered == 20
    assert await sink.flush() == 20
    assert sink.buffered == 0
    db = store_backend.client
    rows = await db.fetch_all(SILENT_FAILURES_PER_HOUR, (T0,))
    assert [(int(r["hour_ms"]), int(r["failures"])) for r in rows] == [(T0, 2), (T0 + HOUR, 1), (T0 + 2 * HOUR, 9)]
    assert [int(r["failures"]) for r in await db.fetch_all(SILENT_FAILURES_PER_HOUR, (T0 + HOUR,))] == [1, 9]
    rows = await db.fetch_all(TOOL_ERRORS, (T0,))
    assert [(r["tool"], int(r["errors"])) for r in rows] == [("bash", 3), ("grep", 1), ("write", 1)]
    stored = await db.fetch_one("SELECT * FROM telemetry_events WHERE kind = 'tool.call' AND name = 'grep' LIMIT 1")
    assert stored is not None
    assert (stored["tenant_id"], stored["session_id"], stored["duration_ms"]) == ("tnt_x", "ses_x", 3.5)
    assert json.loads(stored["fields"])["tool"] == "grep"
    assert await sink.prune(datetime.fromtimestamp((T0 + HOUR) / 1000, tz=UTC)) == 2
    with pytest.raises(InvalidInput):
        await sink.prune(datetime(2026, 1, 1))


async def test_emit_never_raises_masks_secrets_and_the_buffer_is_bounded(store_backend: SqlStoreBackend) -> None:
    sink = SqlTelemetry(store_backend.client, max_buffer=4)
    sink.emit("silent_catch", where="a\x00b", code="\ud800", token="sk-very-secret", nested={"api_key": "k"})
    sink.emit("sandbox.exec", duration_ms=float("nan"), exit_code=object(), data=b"\x00\xff")
    sink.emit("x" * 2000, tool=5, outcome=["ok"], duration_ms=True)
    sink.emit("tool.call", tool="bash", outcome="ok", duration_ms=float("inf"))
    sink.emit("dropped.one")
    sink.emit("dropped.two")
    assert (sink.buffered, sink.dropped) == (4, 2)
    assert await sink.flush() == 4
    rows = await store_backend.client.fetch_all("SELECT * FROM telemetry_events ORDER BY id")
    assert len(rows) == 4
    assert rows[0]["name"] == "ab" and rows[0]["outcome"] == "?"
    assert "sk-very-secret" not in rows[0]["fields"] and json.loads(rows[0]["fields"])["nested"]["api_key"] == "***"
    assert rows[1]["duration_ms"] is None and rows[3]["duration_ms"] is None
    assert len(rows[2]["kind"]) == 512 and rows[2]["name"] is None and rows[2]["duration_ms"] is None
    await sink.aclose()
    sink.emit("after.close")
    assert sink.dropped == 3
    assert await sink.flush() == 0


async def test_a_refused_batch_is_counted_not_raised(tmp_path: Path) -> None:
    from tests.fixtures.engines import open_sqlite_backend

    backend = await open_sqlite_backend(tmp_path / "t.db")
    sink = backend.telemetry_dataset()
    await backend.client.execute("DROP TABLE telemetry_events")
    sink.emit("tool.call", tool="bash", outcome="error")
    assert await sink.flush() == 0
    assert sink.write_failures == 1
    assert sink.last_error is not None
    await backend.aclose()


@pytest.fixture
async def sql_world(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    settings = engine_settings(engine, tmp_path, request)
    async with Platform.open(Settings(**_fields(settings), telemetry_sinks="sql,log")) as oma:
        tenant = await oma.tenants.create(name="telemetry")
        assert oma.telemetry_dataset is not None
        yield World(oma, oma.telemetry_dataset, settings, tenant.id)  # type: ignore[arg-type]


def _fields(settings: Settings) -> dict[str, Any]:
    keep = ("sqlite_path", "blob_url", "local_sandbox_root", "postgres_url", "store_backends", "root_secret")
    return {name: getattr(settings, name) for name in keep}


async def test_the_platform_writes_a_turns_events_in_the_background(sql_world: World) -> None:
    oma = sql_world.oma
    assert isinstance(oma.telemetry, FanoutTelemetry)
    assert any(isinstance(s, LoggingTelemetry) for s in oma.telemetry.sinks)
    sid = await sql_world.session()
    await sql_world.say(sid, "go")
    model = ScriptedModel([[tool_use("bash", {"command": "exit 3"})], [text("done")]])
    await sql_world.t.sessions.run(sid, model=model)
    client = oma.backend("telemetry").client  # type: ignore[attr-defined]

    async def landed() -> bool:  # the background task writes it; nothing here flushes
        rows = await client.fetch_all("SELECT kind FROM telemetry_events WHERE kind = 'turn'")
        return len(rows) == 1

    await poll(landed)
    kinds = {r["kind"] for r in await client.fetch_all("SELECT DISTINCT kind FROM telemetry_events")}
    assert {"turn", "model.call", "tool.call", "sandbox.exec", "session.lifecycle"} <= kinds
    rows = await client.fetch_all(TOOL_ERRORS, (0,))
    assert [(r["tool"], int(r["errors"])) for r in rows] == [("bash", 1)]


async def test_the_platform_flushes_the_dataset_when_it_closes(tmp_path: Path) -> None:
    settings = Settings(
        sqlite_path=str(tmp_path / "o.db"), blob_url=f"file://{tmp_path}/blobs", telemetry_sinks=("sql",)
    )
    async with Platform.open(settings) as oma:
        assert isinstance(oma.telemetry, SqlTelemetry)
        oma.telemetry.interval = 3600.0
        oma.telemetry.emit("silent_catch", where="test.close", code="x")
        for _ in range(3):
            oma.telemetry.emit("tool.call", tool="grep", outcome="error")
    async with Platform.open(settings) as again:
        client = again.backend("telemetry").client  # type: ignore[attr-defined]
        rows = await client.fetch_all("SELECT kind, name FROM telemetry_events ORDER BY id")
    assert [(r["kind"], r["name"]) for r in rows][:1] == [("silent_catch", "test.close")]
    assert sum(1 for r in rows if r["kind"] == "tool.call") == 3


@pytest.mark.parametrize(
    ("value", "sinks"),
    [("log", ("log",)), ("sql, LOG,sql", ("sql", "log")), ("none", ("none",)), ("", ("none",)), (["otel"], ("otel",))],
)
def test_telemetry_sinks_setting(value: Any, sinks: tuple[str, ...]) -> None:
    assert Settings(telemetry_sinks=value).telemetry_sinks == sinks


@pytest.mark.parametrize("value", ["bogus", "log,none", 5, ["log", 1]])
def test_bad_telemetry_sinks(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(telemetry_sinks=value)
    assert info.value.details["field"] == "telemetry_sinks"


def test_openma_telemetry_is_read_from_the_environment() -> None:
    assert Settings.from_env({"OPENMA_TELEMETRY": "sql,otel"}).telemetry_sinks == ("sql", "otel")
    assert Settings().telemetry_sinks == ("log",)
    with pytest.raises(ConfigError, match="OPENMA_TELEMETRY"):
        Settings.from_env({"OPENMA_TELEMETRY": "statsd"})


async def test_no_sink_is_the_null_sink(tmp_path: Path) -> None:
    settings = Settings(sqlite_path=str(tmp_path / "n.db"), blob_url=f"file://{tmp_path}/b", telemetry_sinks="none")
    async with Platform.open(settings) as oma:
        assert isinstance(oma.telemetry, NullTelemetry)
        assert oma.telemetry_dataset is None
        await oma.flush_telemetry()


async def test_open_world_still_uses_the_given_sink(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async for world in open_world(engine_settings(engine, tmp_path, request)):
        assert world.oma.telemetry is world.telemetry
        assert world.oma.telemetry_dataset is None


def test_sql_sink_needs_a_sql_backend() -> None:
    from openma.adapters.telemetry_sql import configured_telemetry

    class NotSql:
        name = "dynamo"

    with pytest.raises(ConfigError, match="dynamo") as info:
        configured_telemetry(Settings(telemetry_sinks="sql"), {"cf": NotSql()})  # type: ignore[dict-item]
    assert info.value.details["field"] == "telemetry_sinks"
