"""Turns across processes on both engines: a requires_action turn resumed by another process, and a holder
killed (SIGKILL) mid-tool whose session the next holder recovers and runs again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from openma import Platform, Settings
from openma.testing import ScriptedModel
from tests.fixtures.engines import ROOT_SECRET
from tests.turn_support import poll, sleeper_pid, text, tool_use

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    out = {
        "OPENMA_BLOB_URL": f"file://{tmp_path}/blobs",
        "OPENMA_SQLITE_PATH": str(tmp_path / "openma.db"),
        "OPENMA_LOCAL_SANDBOX_ROOT": str(tmp_path / "sandboxes"),
    }
    if request.param == "postgres":
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


def _spawn(env: dict[str, str], tenant: str, session: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.turn_worker", *args],
        cwd=ROOT,
        env={**os.environ, **env, "WORKER_TENANT": tenant, "WORKER_SESSION": session},
        stdout=subprocess.PIPE,
        text=True,
    )


async def test_custom_tool_result_resumes_the_turn_in_another_process(
    env: dict[str, str], procs: list[subprocess.Popen[str]]
) -> None:
    custom = {"type": "custom", "name": "lookup", "description": "", "input_schema": {"type": "object"}}
    async with Platform.open(Settings.from_env(env)) as oma:
        t = oma.tenant(await oma.tenants.create(name="procs"))
        agent = await t.agents.create(name="a", model="m", tools=[custom])
        environment = await t.environments.create(name="e")
        sid = (await t.sessions.create(agent_id=agent.id, environment_id=environment.id)).id
        await t.sessions.post(sid, [{"type": "user.message", "content": [text("look")]}])
        first = await t.sessions.run(sid, model=ScriptedModel([[tool_use("lookup", {"q": 1})]]))
        assert first.stop_reason == "requires_action"
        use_id = first.events[-1].data["stop_reason"]["event_ids"][0]
        answer = {"type": "user.custom_tool_result", "custom_tool_use_id": use_id, "content": [text("seven")]}
        await t.sessions.post(sid, [answer])
        tenant_id = t.tenant_id
    proc = _spawn(env, tenant_id, sid, "answer", "It is seven.")
    procs.append(proc)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    reason, shown = out.strip().splitlines()
    assert reason == "end_turn"
    assert json.loads(shown)["content"][0] == {"type": "tool_result", "tool_use_id": use_id, "content": [text("seven")]}
    async with Platform.open(Settings.from_env(env)) as oma:
        messages = (await oma.tenant(tenant_id).sessions.events(sid, types=["agent.message"])).items
        assert messages[-1].data["content"] == [text("It is seven.")]


async def test_a_holder_killed_mid_tool_is_recovered_and_the_session_runs_again(
    env: dict[str, str], procs: list[subprocess.Popen[str]]
) -> None:
    async with Platform.open(Settings.from_env(env)) as oma:
        t = oma.tenant(await oma.tenants.create(name="procs"))
        agent = await t.agents.create(name="a", model="m", tools=[{"type": "agent_toolset_20260401"}])
        environment = await t.environments.create(name="e")
        sid = (await t.sessions.create(agent_id=agent.id, environment_id=environment.id)).id
        await t.sessions.post(sid, [{"type": "user.message", "content": [text("sleep")]}])
        proc = _spawn(env, t.tenant_id, sid, "sleep")
        procs.append(proc)
        root = Path(env["OPENMA_LOCAL_SANDBOX_ROOT"])

        async def running() -> bool:
            assert proc.poll() is None, "the worker exited before its tool ran"
            return sleeper_pid(root) is not None

        await poll(running, timeout=30)
        sleeper = sleeper_pid(root)
        assert sleeper is not None
        try:
            assert [e.type for e in (await t.sessions.events(sid, types=["agent.tool_use"])).items] == [
                "agent.tool_use"
            ]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert (await t.sessions.get(sid)).status == "running"
            model = ScriptedModel([[text("recovered")]])
            result = await t.sessions.run(sid, model=model)
            assert result.stop_reason == "end_turn"
            (res,) = [e.data for e in (await t.sessions.events(sid, types=["agent.tool_result"])).items]
            assert res["is_error"] is True
            assert model.requests[0].messages[-1]["content"][0]["tool_use_id"] == res["tool_use_id"]
            assert (await t.sessions.get(sid)).status == "idle"
        finally:
            if psutil.pid_exists(sleeper):
                os.kill(sleeper, signal.SIGKILL)


async def test_an_interrupt_posted_by_another_process_stops_the_turn(
    env: dict[str, str], procs: list[subprocess.Popen[str]]
) -> None:
    async with Platform.open(Settings.from_env(env)) as oma:
        t = oma.tenant(await oma.tenants.create(name="procs"))
        agent = await t.agents.create(name="a", model="m", tools=[{"type": "agent_toolset_20260401"}])
        environment = await t.environments.create(name="e")
        sid = (await t.sessions.create(agent_id=agent.id, environment_id=environment.id)).id
        await t.sessions.post(sid, [{"type": "user.message", "content": [text("sleep")]}])
        proc = _spawn(env, t.tenant_id, sid, "sleep")
        procs.append(proc)
        root = Path(env["OPENMA_LOCAL_SANDBOX_ROOT"])

        async def running() -> bool:
            assert proc.poll() is None, "the worker exited before its tool ran"
            return sleeper_pid(root) is not None

        await poll(running, timeout=30)
        sleeper = sleeper_pid(root)
        assert sleeper is not None
        await t.sessions.post(sid, [{"type": "user.interrupt"}])

        async def idle() -> bool:
            return (await t.sessions.get(sid)).status == "idle"

        await poll(idle, timeout=5)  # a 30 s sleep was running: only the interrupt ends the turn this soon
        proc.wait(timeout=30)
        assert proc.returncode == 0
        assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE
        types = [e.type for e in (await t.sessions.events(sid, limit=100)).items]
        assert types[-3:] == ["agent.tool_result", "user.interrupt", "session.status_idle"]
