"""The composition root and the tenant-scoped facade, end to end on the embedded default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

import openma
import openma.errors
from openma import ConfigError, Conflict, InvalidInput, NotFound, Platform, Settings, registry
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(sqlite_path=str(tmp_path / "p.db"), blob_url=f"file://{tmp_path}/blobs")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_design_example_runs(settings: Settings) -> None:
    async with openma.Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="acme")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="coder", model="claude-sonnet-4-6", system="...", tools=[{"type": "x"}])
        env = await t.environments.create(name="py", config={"image": "python:3.12"})
        assert (await t.agents.get(agent.id)).tools == [{"type": "x"}]
        assert (await t.environments.get(env.id)).config == {"image": "python:3.12"}
        page = await t.agents.list(limit=10)
        assert [a.id for a in page] == [agent.id] and page.next_cursor is None
        assert oma.tenant(tenant).tenant_id == tenant.id  # a Tenant works as well as its id


async def test_unknown_and_archived_tenants_cannot_write(settings: Settings) -> None:
    async with Platform.open(settings) as oma:
        with pytest.raises(InvalidInput):
            oma.tenant("acme")
        with pytest.raises(NotFound):
            await oma.tenant("tnt_01h0000000000000000000000z").agents.create(name="x", model="m")
        tenant = await oma.tenants.create(name="leaving")
        await oma.tenants.archive(tenant.id)
        with pytest.raises(Conflict):
            await oma.tenant(tenant.id).environments.create(name="x")
        assert len(await oma.tenant(tenant.id).environments.list(include_archived=True)) == 0


async def test_data_survives_reopening(settings: Settings) -> None:
    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="durable")
        agent = await oma.tenant(tenant.id).agents.create(name="a", model="m")
    async with Platform.open(settings) as oma:
        assert (await oma.tenant(tenant.id).agents.get(agent.id)).name == "a"


async def test_auto_migrate_off_needs_an_explicit_migrate(settings: Settings) -> None:
    import attrs

    manual = attrs.evolve(settings, auto_migrate=False)
    async with Platform.open(manual) as oma:
        with pytest.raises(Exception, match="no such table"):
            await oma.tenants.create(name="x")
        from openma.adapters.sql.migrate import load_migrations

        assert await oma.migrate() == {"cf": [m.name for m in load_migrations("sqlite")]}
        assert (await oma.tenants.create(name="x")).name == "x"


async def test_closed_platform_refuses_calls(settings: Settings) -> None:
    oma = await Platform.connect(settings)
    await oma.aclose()
    await oma.aclose()  # idempotent
    with pytest.raises(ConfigError, match="closed"):
        oma.tenants  # noqa: B018


async def test_a_registered_backend_is_used_for_its_stores(settings: Settings) -> None:
    from openma.adapters.sqlite import open_store_backend

    opened: list[str] = []

    async def factory(s: Settings) -> Any:
        opened.append("custom")
        backend = await open_store_backend(s)
        backend.name = "custom"
        return backend

    registry.store_backends.register("custom", factory)
    try:
        custom = Settings(sqlite_path=settings.sqlite_path, store_backends={"default": "cf", "agents": "custom"})
        async with Platform.open(custom) as oma:
            assert opened == ["custom"]
            assert oma.backend("agents").name == "custom" and oma.backend("tenants").name == "cf"
            tenant = await oma.tenants.create(name="x")
            await oma.tenant(tenant.id).agents.create(name="a", model="m")
    finally:
        registry.store_backends.unregister("custom")


async def test_missing_extra_is_a_config_error_with_an_install_hint(settings: Settings) -> None:
    registry.store_backends.register("broken", "openma_not_installed_anywhere.backend:open")
    try:
        s = Settings(sqlite_path=settings.sqlite_path, store_backends={"default": "broken"})
        with pytest.raises(ConfigError, match="cannot be loaded"):
            await Platform.connect(s)
    finally:
        registry.store_backends.unregister("broken")


#: The public API, exactly (DESIGN section 2): a name added or removed must be a deliberate change here.
PUBLIC_NAMES = [
    "Agent",
    "AgentVersion",
    "BlobInfo",
    "BlobReader",
    "BlobStore",
    "ConfigError",
    "Conflict",
    "Credential",
    "Environment",
    "Event",
    "EventTail",
    "ExecResult",
    "FileInfo",
    "GcReport",
    "InboxItem",
    "InvalidInput",
    "KVEntry",
    "KVStore",
    "LeaseLost",
    "Model",
    "ModelError",
    "ModelRequest",
    "NotFound",
    "OpenmaError",
    "Page",
    "Platform",
    "ProcessInfo",
    "ResyncRequired",
    "RetryPolicy",
    "Sandbox",
    "SandboxError",
    "SandboxGone",
    "SandboxProvider",
    "SandboxRateLimited",
    "SandboxRestoreFailed",
    "SandboxSpec",
    "SandboxTimeout",
    "ScheduledWakeup",
    "SecretUnreadable",
    "Session",
    "SessionActor",
    "SessionBusy",
    "Sessions",
    "Settings",
    "SnapshotRef",
    "SpillIntegrityError",
    "StorageUnavailable",
    "Stream",
    "Telemetry",
    "Tenant",
    "TenantScope",
    "TurnResult",
    "UsageExport",
    "UsageSlice",
    "UsageStore",
    "UsageSummary",
    "UsageTotal",
    "Vault",
    "VersionConflict",
    "Worker",
    "WorkerState",
    "__version__",
    "events",
    "sse",
    "to_json",
]

#: Every error's wire code. Codes never change once released; a new error gets a new, distinct code here.
ERROR_CODES = {
    "OpenmaError": "openma_error",
    "NotFound": "not_found",
    "Conflict": "conflict",
    "VersionConflict": "version_conflict",
    "ResyncRequired": "resync_required",
    "InvalidInput": "invalid_input",
    "ConfigError": "config_error",
    "StorageUnavailable": "storage_unavailable",
    "LeaseLost": "lease_lost",
    "ModelError": "model_error",
    "SessionBusy": "session_busy",
    "SandboxError": "sandbox_error",
    "SandboxTimeout": "sandbox_timeout",
    "SandboxRateLimited": "sandbox_rate_limited",
    "SandboxGone": "sandbox_gone",
    "SandboxRestoreFailed": "sandbox_restore_failed",
    "SpillIntegrityError": "spill_integrity",
    "SecretUnreadable": "secret_unreadable",
}

#: The HTTP status each error suggests to a host that speaks HTTP.
HTTP_STATUSES = {
    "OpenmaError": 500,
    "NotFound": 404,
    "Conflict": 409,
    "VersionConflict": 409,
    "ResyncRequired": 410,
    "InvalidInput": 400,
    "ConfigError": 500,
    "StorageUnavailable": 503,
    "LeaseLost": 409,
    "ModelError": 502,
    "SessionBusy": 409,
    "SandboxError": 502,
    "SandboxTimeout": 504,
    "SandboxRateLimited": 429,
    "SandboxGone": 410,
    "SandboxRestoreFailed": 503,
    "SpillIntegrityError": 500,
    "SecretUnreadable": 500,
}


def test_public_names_are_exported_and_documented() -> None:
    assert openma.__all__ == PUBLIC_NAMES  # sorted, no duplicates, nothing missing, nothing extra
    public = {n for n in dir(openma) if not n.startswith("_") and n[0].isupper()}
    assert public == set(PUBLIC_NAMES) - {"__version__", "events", "sse", "to_json"}  # no unexported public name
    assert isinstance(openma.__version__, str) and openma.__version__
    assert openma.sse.__name__ == "openma.sse" and (openma.sse.__doc__ or "").strip()
    assert openma.events.__name__ == "openma.events" and (openma.events.__doc__ or "").strip()
    for name in (n for n in PUBLIC_NAMES if n not in ("__version__", "events", "sse")):
        obj = getattr(openma, name)
        assert obj.__module__.startswith("openma."), name
        doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__  # not an inherited one
        assert (doc or "").strip(), f"{name} has no docstring of its own"


def test_error_codes_are_stable_and_distinct() -> None:
    declared = {
        name: cls
        for name, cls in vars(openma.errors).items()
        if isinstance(cls, type) and issubclass(cls, openma.OpenmaError)
    }
    assert {name: cls.code for name, cls in declared.items()} == ERROR_CODES
    assert len(set(ERROR_CODES.values())) == len(ERROR_CODES)
    for name in ERROR_CODES:
        assert getattr(openma, name) is declared[name], f"{name} is not exported"
    assert {name: cls.http_status for name, cls in declared.items()} == HTTP_STATUSES
    assert issubclass(openma.VersionConflict, openma.Conflict) and issubclass(openma.ResyncRequired, openma.Conflict)
    for sandbox_error in (openma.SandboxTimeout, openma.SandboxRateLimited, openma.SandboxGone):
        assert issubclass(sandbox_error, openma.SandboxError)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_demo_runs_twice_in_a_row(tmp_path: Path, anyio_backend: str) -> None:
    def demo() -> str:
        return subprocess.run(
            [sys.executable, "-m", "openma", "demo"], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout

    first = demo()
    assert "created tenant" in first and "now at version 2" in first
    assert "live #1   user.message" in first and "live #11  session.status_idle" in first
    assert "agent.tool_use             bash" in first and "turn                stop_reason=end_turn" in first
    assert "this workspace has seen 1 run(s)" in first
    assert "sandbox             created -> snapshot" in first
    second = demo()
    assert "found tenant" in second and "created tenant" not in second
    assert "live #12  user.message" in second and "live #22  session.status_idle" in second
    assert "this workspace has seen 2 run(s)" in second  # restored from the first run's snapshot
    assert "created -> restored -> snapshot" in second
    assert (tmp_path / ".openma" / "openma.db").exists()
    doctor = subprocess.run(
        [sys.executable, "-m", "openma", "doctor"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "schema up to date" in doctor.stdout


def test_cli_reports_config_errors_cleanly(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "openma", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"STORE_BACKENDS": "{oops", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert "STORE_BACKENDS is not valid JSON" in out.stderr and "Traceback" not in out.stderr


def test_install_hint_only_when_the_driver_itself_is_missing() -> None:
    from openma.registry import _import

    with pytest.raises(ConfigError) as info:
        _import("psycopg_not_here.x:y", kind="store backend", name="pg", extra="pg", needs=("psycopg_not_here",))
    assert "pip install 'openma[pg]'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _import("a_broken_module_of_ours:y", kind="store backend", name="pg", extra="pg", needs=("psycopg",))
    assert "pip install" not in str(info.value)


async def test_open_without_settings_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENMA_SQLITE_PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("OPENMA_BLOB_URL", f"file://{tmp_path}/env-blobs")
    monkeypatch.setenv("OPENMA_EVENT_SPILL_BYTES", "4321")
    async with Platform.open() as oma:
        assert oma.settings == Settings.from_env() and oma.settings.event_spill_bytes == 4321
        await oma.tenants.create(name="from-env")
    oma = await Platform.connect()
    try:
        assert [t.name for t in await oma.tenants.list()] == ["from-env"]
    finally:
        await oma.aclose()
    assert (tmp_path / "env.db").exists() and (tmp_path / "env-blobs").is_dir()
    monkeypatch.setenv("OPENMA_SQLITE_READERS", "nan")
    with pytest.raises(ConfigError, match="OPENMA_SQLITE_READERS"):
        await Platform.connect()


async def test_from_url_opens_a_platform_from_one_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with Platform.from_url("sqlite:///data/app.db", blob_url="memory://from-url") as oma:
        assert oma.settings.sqlite_path == "data/app.db" and sorted(oma.backends) == ["cf"]
        await oma.tenants.create(name="x")
    assert (tmp_path / "data" / "app.db").exists()
    with pytest.raises(ConfigError, match="unsupported database URL"):
        Platform.from_url("mysql://u:pw@db/app")
    with pytest.raises(ConfigError, match=r"use Platform.from_url\(url\)"):
        await Platform.connect("sqlite:///data/app.db")  # type: ignore[arg-type]


class ClosingPart:
    """A platform part whose ``aclose`` records the call, then raises ``error`` if it has one."""

    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1
        if self.error is not None:
            raise self.error


async def test_aclose_closes_every_part_and_raises_every_failure(settings: Settings) -> None:
    from openma.errors import StorageUnavailable

    provider = ClosingPart("provider", RuntimeError("provider close failed"))

    async def open_provider(s: Settings, **_: Any) -> Any:
        return provider

    registry.sandboxes.register("closing", open_provider)
    try:
        a, b, c = ClosingPart("a", StorageUnavailable("a is down")), ClosingPart("b"), ClosingPart("c", OSError("c"))
        blobs = ClosingPart("blobs", ValueError("blobs close failed"))
        oma = Platform(attrs.evolve(settings, sandbox="closing"), {"a": a, "b": b, "c": c}, blobs)  # type: ignore[dict-item, arg-type]
        await oma.sandbox_orchestrator()
        with pytest.raises(ExceptionGroup) as info:
            await oma.aclose()
    finally:
        registry.sandboxes.unregister("closing")
    assert [p.closed for p in (provider, a, b, c, blobs)] == [1, 1, 1, 1, 1]
    assert [type(e) for e in info.value.exceptions] == [RuntimeError, StorageUnavailable, OSError, ValueError]
    assert "while closing the store backend 'a'" in info.value.exceptions[1].__notes__
    await oma.aclose()  # closed once: nothing left to fail
    assert a.closed == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_gc_dry_run_matches_the_real_pass(
    engine: str, engine_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    from datetime import UTC, datetime, timedelta

    url = f"sqlite:///{engine_url}" if engine == "sqlite" else engine_url
    async with Platform.from_url(
        url, blob_url=f"file://{tmp_path}/b", event_spill_bytes=1_000, root_secret=ROOT_SECRET
    ) as oma:
        tenant = await oma.tenants.create(name="gc")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="a", model="m")
        environment = await t.environments.create(name="e")
        msg = {"type": "agent.message", "content": [{"type": "text", "text": "x"}]}
        big = {"type": "agent.message", "content": [{"type": "text", "text": "y" * 3_000}]}
        ids = []
        for _ in range(3):
            session = await t.sessions.create(agent_id=agent.id, environment_id=environment.id)
            ids.append(session.id)
            await t.sessions.unfenced_append(session.id, [msg, big, msg])
            stream = await t.sessions.open_stream(session.id)
            await t.sessions.finalize_stream(session.id, stream.id, "completed")
            await t.sessions.open_stream(session.id)  # still open: kept
            await t.sessions.post(session.id, [{**msg, "id": "p"}, {**msg, "id": "c"}, {**msg, "id": "w"}])
            await t.sessions.unfenced_promote(session.id, ["p"])
            await t.sessions.cancel(session.id, ["c"])
        cutoff = datetime.now(UTC) + timedelta(seconds=1)  # past every row, whatever the clock's resolution
        dry = await t.sessions.gc(cutoff, batch_size=2, dry_run=True)
        assert [len(await t.sessions.events(s, after=0)) for s in ids] == [4, 4, 4]  # nothing removed
        real = await t.sessions.gc(cutoff, batch_size=2)
        assert dry == real
        assert (real.events, real.streams, real.inbox, real.blobs) == (12, 3, 3, 3)
        assert await t.sessions.gc(cutoff, dry_run=True) == openma.GcReport()
        with pytest.raises(InvalidInput):
            await t.sessions.gc(cutoff, dry_run="yes")  # type: ignore[arg-type]


async def test_the_blocks_error_survives_a_failing_close(settings: Settings) -> None:
    failing = ClosingPart("x", OSError("close failed"))
    with pytest.raises(NotFound) as info:
        async with Platform.open(settings) as oma:
            real = oma.backend("tenants")
            oma._backends["cf"] = failing  # type: ignore[assignment]  # a backend whose close fails
            await real.aclose()
            raise NotFound("the block's own error")
    assert failing.closed == 1
    assert any("closing the platform also failed" in note for note in info.value.__notes__)
