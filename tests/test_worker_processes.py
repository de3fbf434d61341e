"""Worker processes sharing one database (``python -m openma worker`` through :mod:`tests.worker_proc`):
every session with input gets its turn exactly once; a worker killed with SIGKILL mid-turn has its sessions
recovered and finished by the others; a worker sent SIGTERM drains within its deadline and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma import Platform, Settings
from openma.adapters.sql.backend import SqlStoreBackend
from tests.fixtures.engines import ROOT_SECRET
from tests.turn_support import poll, text

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def engine_env(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    out = {
        "OPENMA_BLOB_URL": f"file://{tmp_path}/blobs",
        "OPENMA_SQLITE_PATH": str(tmp_path / "openma.db"),
        "OPENMA_LOCAL_SANDBOX_ROOT": str(tmp_path / "sandboxes"),
    }
    if engine == "postgres":
        out["OPENMA_POSTGRES_URL"] = request.getfixturevalue("pg_url")
        out["STORE_BACKENDS"] = '{"default": "pg"}'
        out["OPENMA_ROOT_SECRET"] = ROOT_SECRET
    return out


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    out: list[subprocess.Popen[str]] = []
    yield out
    for p in out:
        if p.poll() is None:
            p.kill()
        p.wait()


def spawn(env: dict[str, str], *args: str, delay: float = 0.05) -> subprocess.Popen[str]:
    """A worker process; its stderr goes to a file named after it (``proc.args[-1]``)."""
    log = Path(env["OPENMA_LOCAL_SANDBOX_ROOT"]).parent / f"worker-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.worker_proc", "worker", "--model", "scripted:x", *args],
            cwd=ROOT,
            env={**os.environ, **env, "WORKER_MODEL_DELAY": str(delay)},
            stderr=out,
            text=True,
        )
    logs[proc.pid] = log
    return proc


logs: dict[int, Path] = {}


def stderr_of(proc: subprocess.Popen[str]) -> str:
    return logs[proc.pid].read_text()


async def make_sessions(oma: Platform, count: int) -> tuple[Any, list[str]]:
    t = oma.tenant(await oma.tenants.create(name="workers"))
    agent = await t.agents.create(name="a", model="m", tools=[])
    environment = await t.environments.create(name="e")
    sids = [(await t.sessions.create(agent_id=agent.id, environment_id=environment.id)).id for _ in range(count)]
    return t, sids


async def held_by(backend: SqlStoreBackend, pid: int) -> int:
    rows = await backend.client.fetch_all("SELECT lease_holder FROM sessions WHERE status = 'running'")
    return sum(1 for r in rows if r["lease_holder"] and f":{pid}:" in r["lease_holder"])


async def settled(backend: SqlStoreBackend) -> bool:
    runnable = await backend.client.fetch_one("SELECT COUNT(*) AS n FROM session_runnable")
    running = await backend.client.fetch_one("SELECT COUNT(*) AS n FROM sessions WHERE status = 'running'")
    assert runnable is not None and running is not None
    return int(runnable["n"]) == 0 and int(running["n"]) == 0


async def check_each_answered_once(t: Any, sids: list[str], *, killed: frozenset[str] | set[str] = frozenset()) -> None:
    """Each input promoted once and answered once by a finished answer; a session whose turn a killed worker
    held was recovered (a warning, and its open stream logged as an interrupted message) and then answered
    by the next holder's model call, never twice."""
    for sid in sids:
        events = (await t.sessions.events(sid, limit=1000)).items
        types = [e.type for e in events]
        answers = [e for e in events if e.type == "agent.message" and not e.data.get("interrupted")]
        assert types.count("user.message") == 1 and len(answers) == 1, (sid, types)
        assert types[-1] == "session.status_idle", (sid, types)
        assert len({e.id for e in events}) == len(events), (sid, types)
        if sid in killed or "session.warning" in types:  # recovered: its holder died mid-turn
            assert "session.warning" in types, (sid, types)
            assert types.count("span.model_request_start") <= 2, (sid, types)
        else:
            assert types.count("span.model_request_start") == 1, (sid, types)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("count", "concurrency"),
    [(90, 4), pytest.param(300, 8, marks=[pytest.mark.slow, pytest.mark.timeout(600)])],
)
async def test_three_workers_kill_and_sigterm_each_session_answered_once(
    count: int, concurrency: int, tmp_path: Path, request: pytest.FixtureRequest, procs: list[subprocess.Popen[str]]
) -> None:
    env = engine_env("postgres", tmp_path, request)
    async with Platform.open(Settings.from_env(env)) as oma:
        backend = oma.backend("sessions")
        assert isinstance(backend, SqlStoreBackend)
        t, sids = await make_sessions(oma, count)
        common = ("--concurrency", str(concurrency), "--poll-interval", "0.5")
        victim = spawn(env, *common, "--drain-timeout", "5", delay=0.3)
        drained = spawn(env, *common, "--drain-timeout", "10", delay=0.3)
        survivor = spawn(env, *common, "--drain-timeout", "5", delay=0.3)
        procs += [victim, drained, survivor]
        for sid in sids:
            await t.sessions.post(sid, [{"type": "user.message", "content": [text("go")]}])
        await poll(lambda: held_by_any(backend, victim.pid), timeout=60)
        rows = await backend.client.fetch_all("SELECT id, lease_holder FROM sessions WHERE status = 'running'")
        killed = {r["id"] for r in rows if r["lease_holder"] and f":{victim.pid}:" in r["lease_holder"]}
        victim.send_signal(signal.SIGKILL)
        await poll(lambda: held_by_any(backend, drained.pid), timeout=60)
        asked = time.monotonic()
        drained.send_signal(signal.SIGTERM)
        await poll(lambda: exited(drained), timeout=30)
        took = time.monotonic() - asked
        err = stderr_of(drained)
        assert drained.returncode == 0, err
        assert took < 10 + 5, took  # its deadline plus the process's own shutdown
        assert "SIGTERM; draining" in err and "worker: stopped" in err, err
        await poll(lambda: settled(backend), timeout=120 if count <= 90 else 400, every=0.2)
        await check_each_answered_once(t, sids, killed=killed)
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=30) == 0


async def exited(proc: subprocess.Popen[str]) -> bool:
    return proc.poll() is not None


async def held_by_any(backend: SqlStoreBackend, pid: int) -> bool:
    return await held_by(backend, pid) > 0


async def test_worker_processes_share_one_sqlite_file(
    tmp_path: Path, request: pytest.FixtureRequest, procs: list[subprocess.Popen[str]]
) -> None:
    env = engine_env("sqlite", tmp_path, request)
    async with Platform.open(Settings.from_env(env)) as oma:
        backend = oma.backend("sessions")
        assert isinstance(backend, SqlStoreBackend)
        t, sids = await make_sessions(oma, 24)
        procs += [spawn(env, "--concurrency", "3", "--poll-interval", "0.1") for _ in range(2)]
        for sid in sids:
            await t.sessions.post(sid, [{"type": "user.message", "content": [text("go")]}])
        try:
            await poll(lambda: settled(backend), timeout=60, every=0.2)
        except TimeoutError:
            raise AssertionError("\n".join(stderr_of(p) for p in procs)) from None
        await check_each_answered_once(t, sids)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in procs] == [0, 0]


@pytest.mark.postgres
@pytest.mark.parametrize("seconds", [6, pytest.param(30, marks=pytest.mark.slow)])
async def test_a_wakeup_every_second_fires_once_per_due_time_across_a_worker_restart(
    seconds: int, tmp_path: Path, request: pytest.FixtureRequest, procs: list[subprocess.Popen[str]]
) -> None:
    env = engine_env("postgres", tmp_path, request)
    async with Platform.open(Settings.from_env(env)) as oma:
        t, [sid] = await make_sessions(oma, 1)
        args = ("--concurrency", "2", "--poll-interval", "0.2")
        procs += [spawn(env, *args), spawn(env, *args)]
        began = datetime.now(UTC)
        w = await t.sessions.schedule_wakeup(sid, every=1, at=began + timedelta(seconds=1))
        await anyio.sleep(seconds / 2)
        procs[0].send_signal(signal.SIGKILL)  # one worker dies; the other goes on alone for a while
        procs[0].wait()
        await anyio.sleep(1.5)
        procs.append(spawn(env, *args))  # and a new one joins
        await anyio.sleep(seconds / 2)
        await t.sessions.cancel_wakeup(sid, w.id)
        ended = datetime.now(UTC)
        await anyio.sleep(1.0)
        messages = await world_messages(t, sid)
        due = [m["metadata"]["scheduled_at"] for m in messages]
        assert len(due) == len(set(due)), due  # no due time fired twice
        expected = int((ended - began).total_seconds()) - 1
        assert expected - 2 <= len(due) <= expected + 1, (len(due), expected, due)
        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in procs[1:]] == [0, 0]


async def world_messages(t: Any, sid: str) -> list[dict[str, Any]]:
    page = await t.sessions.events(sid, types=["user.message"], limit=1000)
    return [e.data for e in page.items]
