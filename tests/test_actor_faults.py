"""Fault tests of the SessionActor with real processes and real connections.

* a holder killed with SIGKILL mid-turn: the next process acquires at once (no lease timeout), recovery runs
  exactly once, the log stays gapless;
* processes fighting over one session while their lease connections are terminated at random (Postgres) or
  while they are killed at random (SQLite): no duplicate seq, no gap, and no write accepted from a holder
  after it lost its lease (the epochs in the log never go down);
* a holder frozen with SIGSTOP while another takes over: after SIGCONT its next write is refused, and so is
  every operation on the sandbox it obtained (the successor's snapshot stays the session's latest, and the
  sandbox the successor reattached to is not destroyed by the stale host on its way out).

The fights print their counts. ``OPENMA_FIGHT_SECONDS`` sets their length (20 s by default).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma import Platform, Settings
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
FIGHT_SECONDS = float(os.environ.get("OPENMA_FIGHT_SECONDS", "20"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {"OPENMA_BLOB_URL": f"file://{tmp_path}/blobs", "OPENMA_SQLITE_PATH": str(tmp_path / "openma.db")}
    if request.param == "postgres":
        env["OPENMA_POSTGRES_URL"] = request.getfixturevalue("pg_url")
        env["STORE_BACKENDS"] = '{"default": "cf", "sessions": "pg"}'
        env["OPENMA_ROOT_SECRET"] = ROOT_SECRET
    return env


async def _new_session(env: dict[str, str]) -> tuple[str, str]:
    async with Platform.open(Settings.from_env(env)) as oma:
        tenant = await oma.tenants.create(name="faults")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="a", model="m")
        environment = await t.environments.create(name="e")
        session = await t.sessions.create(agent_id=agent.id, environment_id=environment.id)
        return tenant.id, session.id


def _spawn(env: dict[str, str], tenant: str, session: str, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.actor_worker", *args],
        cwd=ROOT,
        env={**os.environ, **env, "WORKER_TENANT": tenant, "WORKER_SESSION": session},
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        text=True,
    )


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"worker exited with {proc.wait()}"
    return line


async def _log(env: dict[str, str], tenant: str, session: str) -> list[Any]:
    async with Platform.open(Settings.from_env(env)) as oma:
        sessions = oma.tenant(tenant).sessions
        out: list[Any] = []
        after = 0
        while True:
            page = await sessions.events(session, after=after, limit=500)
            out.extend(page)
            if len(page) < 500:
                return out
            after = page.items[-1].seq


def _check_log(events: list[Any]) -> None:
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "the log has a gap or a duplicate seq"
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "an event id is in the log twice"
    epochs = [e.data["epoch"] for e in events if "epoch" in e.data]
    assert epochs == sorted(epochs), "a holder wrote after a newer holder had taken the lease"


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
        p.wait()


async def test_a_killed_holder_is_recovered_once_by_the_next(
    settings_env: dict[str, str], reap: list[subprocess.Popen[str]]
) -> None:
    tenant, session = await _new_session(settings_env)
    holder = _spawn(settings_env, tenant, session, "hold")
    reap.append(holder)
    assert _first_line(holder).startswith("ready")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    async with Platform.open(Settings.from_env(settings_env)) as oma:
        sessions = oma.tenant(tenant).sessions
        started = time.monotonic()
        async with sessions.actor(session, wait=5) as actor:
            took = time.monotonic() - started
            plan = actor.recovery
        print(f"\nacquired {took * 1000:.0f} ms after the holder was killed (no lease timeout)")
        assert plan is not None
        assert (plan.finalized_streams, plan.injected_tool_results, plan.new_status) == (1, 1, "idle")
        async with sessions.actor(session, wait=0) as again:
            assert again.recovery is None  # exactly once
        events = await _log(settings_env, tenant, session)
        _check_log(events)
        types = [e.type for e in events]
        assert types.count("agent.message") == 1 and types.count("agent.tool_result") == 1
        assert next(e for e in events if e.type == "agent.message").data["content"][0]["text"] == "partial answer"
        assert (await sessions.get(session)).status == "idle"


def _tally(lines: list[str]) -> tuple[dict[str, int], set[str], set[str]]:
    accepted = {ln.split()[1] for ln in lines if ln.startswith("A ")}
    refused = {ln.split()[1] for ln in lines if ln.startswith("R ")}
    counts = {"attempted": len(accepted) + len(refused), "accepted": len(accepted), "refused": len(refused)}
    return counts, accepted, refused


@pytest.mark.postgres
async def test_postgres_fight_with_connections_terminated_at_random(
    pg_url: str, tmp_path: Path, reap: list[subprocess.Popen[str]]
) -> None:
    import psycopg

    env = {
        "OPENMA_BLOB_URL": f"file://{tmp_path}/blobs",
        "OPENMA_SQLITE_PATH": str(tmp_path / "openma.db"),
        "OPENMA_POSTGRES_URL": pg_url,
        "STORE_BACKENDS": '{"default": "cf", "sessions": "pg"}',
        "OPENMA_ROOT_SECRET": ROOT_SECRET,
    }
    tenant, session = await _new_session(env)
    workers = [_spawn(env, tenant, session, "fight", str(FIGHT_SECONDS), f"w{i}") for i in range(2)]
    reap.extend(workers)
    terminations = 0
    rng = random.Random(7)
    deadline = time.monotonic() + FIGHT_SECONDS
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        while time.monotonic() < deadline:
            await anyio.sleep(0.2 + rng.random() * 0.6)
            cur = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
            )
            row = await cur.fetchone()
            terminations += int(row[0]) if row else 0
    lines: list[str] = []
    for w in workers:
        out, _ = await anyio.to_thread.run_sync(w.communicate)
        lines += out.splitlines()
        assert w.returncode == 0
    counts, accepted, refused = _tally(lines)
    events = await _log(env, tenant, session)
    print(f"\npostgres fight: {counts}, lease connections terminated: {terminations}, events in log: {len(events)}")
    _check_log(events)
    logged = {e.id for e in events}
    assert accepted <= logged, "an accepted write is missing from the log"
    assert not (refused & logged), "a refused write reached the log"
    assert counts["accepted"] > 0 and terminations > 0 and counts["refused"] > 0


async def test_sqlite_fight_with_holders_killed_at_random(tmp_path: Path, reap: list[subprocess.Popen[str]]) -> None:
    env = {"OPENMA_BLOB_URL": f"file://{tmp_path}/blobs", "OPENMA_SQLITE_PATH": str(tmp_path / "openma.db")}
    tenant, session = await _new_session(env)
    seconds = max(5.0, FIGHT_SECONDS / 2)
    rng = random.Random(11)
    live = [_spawn(env, tenant, session, "fight", str(seconds), f"w{i}") for i in range(3)]
    reap.extend(live)
    outputs: list[str] = []
    kills = 0
    deadline = time.monotonic() + seconds - 2
    while time.monotonic() < deadline:
        await anyio.sleep(0.5 + rng.random())
        victim = live.pop(rng.randrange(len(live)))
        victim.kill()
        out, _ = await anyio.to_thread.run_sync(victim.communicate)
        outputs += out.splitlines()
        kills += 1
        remaining = max(1.0, deadline + 2 - time.monotonic())
        replacement = _spawn(env, tenant, session, "fight", str(remaining), f"r{kills}")
        live.append(replacement)
        reap.append(replacement)
    for w in live:
        out, _ = await anyio.to_thread.run_sync(w.communicate)
        outputs += out.splitlines()
    counts, accepted, refused = _tally(outputs)
    events = await _log(env, tenant, session)
    print(f"\nsqlite fight: {counts}, holders killed: {kills}, events in log: {len(events)}")
    _check_log(events)
    logged = {e.id for e in events}
    assert accepted <= logged
    assert not (refused & logged)
    assert counts["accepted"] > 0 and kills > 0


@pytest.mark.postgres
async def test_a_frozen_holder_is_refused_after_another_takes_over(
    pg_url: str, tmp_path: Path, reap: list[subprocess.Popen[str]]
) -> None:
    import psycopg

    env = {
        "OPENMA_BLOB_URL": f"file://{tmp_path}/blobs",
        "OPENMA_SQLITE_PATH": str(tmp_path / "openma.db"),
        "OPENMA_POSTGRES_URL": pg_url,
        "STORE_BACKENDS": '{"default": "cf", "sessions": "pg"}',
        "OPENMA_ROOT_SECRET": ROOT_SECRET,
    }
    tenant, session = await _new_session(env)
    frozen = _spawn(env, tenant, session, "frozen", stdin=True)
    reap.append(frozen)
    assert _first_line(frozen).startswith("ready")
    frozen.send_signal(signal.SIGSTOP)
    # The frozen holder cannot answer; its lease connection is cut (as a partition or keepalive would).
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid <> pg_backend_pid()"
        )
    async with (
        Platform.open(Settings.from_env(env)) as oma,
        oma.tenant(tenant).sessions.actor(session, wait=5) as actor,
    ):
        await actor.append([{"type": "agent.message", "content": [], "from": "successor"}])
    frozen.send_signal(signal.SIGCONT)
    assert frozen.stdin is not None and frozen.stdout is not None
    frozen.stdin.write("go\n")
    frozen.stdin.flush()
    assert frozen.stdout.readline().strip() == "refused"
    frozen.wait(timeout=30)
    events = await _log(env, tenant, session)
    assert [e.data.get("from") for e in events] == ["successor"]


@pytest.mark.postgres
async def test_a_frozen_holders_sandbox_is_fenced_after_another_takes_over(
    pg_url: str, tmp_path: Path, reap: list[subprocess.Popen[str]]
) -> None:
    import psycopg

    env = {
        "OPENMA_BLOB_URL": f"file://{tmp_path}/blobs",
        "OPENMA_SQLITE_PATH": str(tmp_path / "openma.db"),
        "OPENMA_POSTGRES_URL": pg_url,
        "STORE_BACKENDS": '{"default": "cf", "sessions": "pg"}',
        "OPENMA_ROOT_SECRET": ROOT_SECRET,
        "OPENMA_LOCAL_SANDBOX_ROOT": str(tmp_path / "sandboxes"),
    }
    tenant, session = await _new_session(env)
    frozen = _spawn(env, tenant, session, "frozen-sandbox", stdin=True)
    reap.append(frozen)
    assert _first_line(frozen).startswith("ready")
    frozen.send_signal(signal.SIGSTOP)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid <> pg_backend_pid()"
        )
    async with Platform.open(Settings.from_env(env)) as oma:
        sessions = oma.tenant(tenant).sessions
        async with sessions.actor(session, wait=5) as actor:
            sandbox = await actor.sandbox()  # the same host: it reattaches to the sandbox the row names
            assert await sandbox.read_file("owner.txt") == b"frozen"
            await sandbox.write_file("owner.txt", b"successor")
            mine = await sandbox.snapshot()
            frozen.send_signal(signal.SIGCONT)
            assert frozen.stdin is not None and frozen.stdout is not None
            frozen.stdin.write("go\n")
            frozen.stdin.flush()
            lines = [frozen.stdout.readline().strip() for _ in range(4)]
            assert lines == ["refused exec", "refused write_file", "refused read_file", "refused snapshot"]
            assert await anyio.to_thread.run_sync(frozen.wait, 30) == 0
            record = await sessions.store.sandbox_record(session)
            assert record.snapshot is not None and record.snapshot["key"] == mine.key
            assert record.sandbox_id == sandbox.id
            assert await sandbox.read_file("owner.txt") == b"successor"
