"""The command line against the configuration traps: bare durations, gc dry runs, doctor, DATABASE_URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from openma import Platform, Settings
from openma.cli import main

pytestmark = pytest.mark.anyio

#: A clean environment: only what Python needs, so the host's OPENMA_* variables cannot leak in.
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openma", *args],
        cwd=cwd,
        env={**BASE_ENV, **(env or {})},
        capture_output=True,
        text=True,
    )


async def make_history(settings: Settings) -> tuple[str, str]:
    """A tenant with one session: six events (one spilled to blobs), a finalized stream, settled inbox rows."""
    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="gc")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="a", model="m")
        environment = await t.environments.create(name="e")
        session = await t.sessions.create(agent_id=agent.id, environment_id=environment.id)
        msg = {"type": "agent.message", "content": [{"type": "text", "text": "x"}]}
        big = {"type": "agent.message", "content": [{"type": "text", "text": "y" * 5_000}]}
        await t.sessions.unfenced_append(session.id, [msg] * 5 + [big])
        stream = await t.sessions.open_stream(session.id)
        await t.sessions.finalize_stream(session.id, stream.id, "completed")
        await t.sessions.post(session.id, [{**msg, "id": "done"}, {**msg, "id": "dropped"}])
        await t.sessions.unfenced_promote(session.id, ["done"])
        await t.sessions.cancel(session.id, ["dropped"])
        return tenant.id, session.id


@pytest.mark.parametrize(
    "args",
    [
        ["gc", "--older-than", "30"],
        ["gc", "--older-than", " 2.5 ", "--dry-run"],
        ["sessions", "prune", "tnt_01h0000000000000000000000z", "ses_01h0000000000000000000000z", "--older-than", "30"],
        ["sandboxes", "sweep", "--older-than", "7200"],
    ],
)
def test_a_duration_without_a_unit_is_refused_before_anything_opens(tmp_path: Path, args: list[str]) -> None:
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error [invalid_input]" in out.stderr and "has no unit" in out.stderr
    assert "Traceback" not in out.stderr
    assert files_under(tmp_path) == []  # no database was opened or created


async def test_gc_dry_run_counts_what_a_real_pass_removes(tmp_path: Path) -> None:
    env = {"OPENMA_SQLITE_PATH": str(tmp_path / "gc.db"), "OPENMA_BLOB_URL": f"file://{tmp_path}/b"}
    env["OPENMA_EVENT_SPILL_BYTES"] = "1000"
    tenant_id, session_id = await make_history(Settings.from_env(env))
    dry = cli("gc", "--older-than", "0s", "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("dry run (nothing is removed): gc of what is older than 0s")
    line = "events 7, inbox 1, streams 1, sessions 0, blobs 1"
    assert f"{tenant_id}: would remove {line}, expired blobs 0, kv not counted" in dry.stdout
    assert f"total (1 tenant(s)): would remove {line}" in dry.stdout
    async with Platform.open(Settings.from_env(env)) as oma:  # nothing went
        assert len(await oma.tenant(tenant_id).sessions.events(session_id, after=0)) == 7
    real = cli("gc", "--older-than", "0s", cwd=tmp_path, env=env)
    assert real.returncode == 0, real.stderr
    assert f"{tenant_id}: removed {line}, expired blobs 0, kv 0" in real.stdout
    assert f"total (1 tenant(s)): removed {line}, expired blobs 0, kv 0" in real.stdout
    again = cli("gc", "--older-than", "0s", "--dry-run", cwd=tmp_path, env=env)
    assert "would remove events 0, inbox 0, streams 0, sessions 0, blobs 0" in again.stdout


def test_doctor_creates_nothing(tmp_path: Path) -> None:
    out = cli("doctor", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "backend cf: ok: .openma/openma.db does not exist yet" in out.stdout
    assert "blobs file://./.openma/blobs: ok" in out.stdout and "sandbox local: ok" in out.stdout
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("env", "missing", "needle"),
    [
        ({"OPENMA_BLOB_URL": "s3://bucket/prefix"}, "s3fs", "blobs s3://bucket/prefix: FAILED"),
        ({"OPENMA_SANDBOX": "e2b", "E2B_API_KEY": "k"}, "e2b", "sandbox e2b: FAILED"),
    ],
)
def test_doctor_fails_when_a_driver_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], missing: str, needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, missing, None)  # "import s3fs" now raises ImportError
    for name in [n for n in os.environ if n.startswith(("OPENMA_", "E2B_", "DAYTONA_")) or n == "STORE_BACKENDS"]:
        monkeypatch.delenv(name)
    result = CliRunner().invoke(main, ["doctor"], env=env)
    assert result.exit_code == 1, result.output
    assert needle in result.output and missing in result.output and "pip install 'openma[" in result.output
    assert "backend cf: ok" in result.output  # the other parts were still checked
    assert "1 problem(s) found" in result.output
    assert files_under(tmp_path) == []


def test_doctor_checks_every_part_even_after_one_fails(tmp_path: Path) -> None:
    env = {
        "STORE_BACKENDS": '{"default": "cf", "agents": "pg"}',
        "OPENMA_POSTGRES_URL": "postgresql://nobody@127.0.0.1:1/nothing",
        "OPENMA_PG_CONNECT_TIMEOUT": "2",
        "OPENMA_SANDBOX": "e2b",  # no E2B_API_KEY
    }
    out = cli("doctor", cwd=tmp_path, env=env)
    assert out.returncode == 1
    assert "backend pg: FAILED: [storage_unavailable]" in out.stdout
    assert "backend cf: ok" in out.stdout and "blobs file://./.openma/blobs: ok" in out.stdout
    assert "sandbox e2b: FAILED: [config_error]" in out.stdout and "E2B_API_KEY" in out.stdout
    assert "2 problem(s) found" in out.stderr
    assert files_under(tmp_path) == []


def test_doctor_on_an_existing_database_reports_its_schema(tmp_path: Path) -> None:
    status = cli("migrate", "--status", cwd=tmp_path)
    assert status.returncode == 0 and "cf: 0001_" in status.stdout
    assert "pending (the database does not exist yet)" in status.stdout
    assert files_under(tmp_path) == []  # a status check creates nothing either
    assert cli("migrate", cwd=tmp_path).returncode == 0
    out = cli("doctor", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "backend cf: ok: SqliteClient" in out.stdout and "schema up to date" in out.stdout


@pytest.mark.parametrize("url", ["sqlite:///app.db", "mysql://u:pw@db/app", "postgresql+asyncpg://u:pw@db/app"])
def test_an_unrelated_database_url_does_not_break_the_cli(tmp_path: Path, url: str) -> None:
    out = cli("doctor", cwd=tmp_path, env={"DATABASE_URL": url})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pw" not in out.stdout


def test_a_bad_database_url_for_pg_names_the_variable(tmp_path: Path) -> None:
    out = cli("doctor", cwd=tmp_path, env={"DATABASE_URL": "mysql://u:hunter2@db/app", "STORE_BACKENDS": '{"kv":"pg"}'})
    assert out.returncode == 2
    assert "error [config_error]: DATABASE_URL: postgres_url must start with postgresql://" in out.stderr
    assert "hunter2" not in out.stderr and "Traceback" not in out.stderr


def test_unknown_stores_are_refused_before_anything_opens(tmp_path: Path) -> None:
    out = cli("migrate", cwd=tmp_path, env={"STORE_BACKENDS": '{"default": "cf", "vault": "pg"}'})
    assert out.returncode == 2 and "unknown store 'vault'" in out.stderr
    assert files_under(tmp_path) == []
