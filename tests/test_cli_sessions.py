"""The session verbs of the command line: tail, prune, gc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openma import Platform, Settings

pytestmark = pytest.mark.anyio


async def test_tail_prune_and_gc(tmp_path: Path) -> None:
    env = {**os.environ, "OPENMA_SQLITE_PATH": str(tmp_path / "cli.db"), "OPENMA_BLOB_URL": f"file://{tmp_path}/b"}
    settings = Settings.from_env(env)
    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="cli")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="a", model="m")
        environment = await t.environments.create(name="e")
        session = await t.sessions.create(agent_id=agent.id, environment_id=environment.id)
        async with t.sessions.actor(session.id) as actor:
            await actor.append(
                [{"type": "agent.message", "content": [{"type": "text", "text": f"m{i}"}]} for i in range(5)]
            )

    def run(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "openma", *args], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    lines = [json.loads(x) for x in run("sessions", "tail", tenant.id, session.id, "--no-follow").splitlines()]
    assert [x["seq"] for x in lines] == [1, 2, 3, 4, 5]
    assert lines[0]["data"]["content"][0]["text"] == "m0"
    assert "removed 3 event(s)" in run("sessions", "prune", tenant.id, session.id, "--keep-last", "2")
    tail = run("sessions", "tail", tenant.id, session.id, "--no-follow", "--after", "3")
    assert [json.loads(x)["seq"] for x in tail.splitlines()] == [4, 5]
    assert f"{tenant.id}: removed events 0" in run("gc", "--older-than", "30d")
    bad = subprocess.run(
        [sys.executable, "-m", "openma", "gc", "--older-than", "soon"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid duration" in bad.stderr
