"""Shared setup of the turn-loop tests: a platform on each engine, a tenant, an agent with tools, a session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from openma import Platform, Settings
from openma.adapters.telemetry import MemoryTelemetry
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio

TOOLSET: dict[str, Any] = {"type": "agent_toolset_20260401"}


def engine_settings(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings that put every store on ``engine`` (a fresh database), blobs and sandboxes under ``tmp_path``."""
    common: dict[str, Any] = {
        "sqlite_path": str(tmp_path / "openma.db"),
        "blob_url": f"file://{tmp_path}/blobs",
        "local_sandbox_root": str(tmp_path / "sandboxes"),
    }
    if engine == "postgres":
        return Settings(
            **common,
            postgres_url=str(request.getfixturevalue("pg_url")),
            store_backends={"default": "pg"},
            root_secret=ROOT_SECRET,
        )
    return Settings(**common)


@attrs.define
class World:
    """An open platform with one tenant and a helper to make sessions."""

    oma: Platform
    telemetry: MemoryTelemetry
    settings: Settings
    tenant_id: str

    @property
    def t(self) -> Any:
        return self.oma.tenant(self.tenant_id)

    async def session(self, tools: list[dict[str, Any]] | None = None, system: str = "be brief") -> str:
        t = self.t
        agent = await t.agents.create(name="a", model="m-1", system=system, tools=[TOOLSET] if tools is None else tools)
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        return str(session.id)

    async def say(self, session_id: str, text: str) -> None:
        await self.t.sessions.post(session_id, [{"type": "user.message", "content": [{"type": "text", "text": text}]}])

    async def types(self, session_id: str) -> list[str]:
        return [e.type for e in (await self.t.sessions.events(session_id, limit=1000)).items]

    async def of(self, session_id: str, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in (await self.t.sessions.events(session_id, limit=1000, types=[kind])).items]


async def open_world(settings: Settings) -> AsyncIterator[World]:
    telemetry = MemoryTelemetry()
    async with Platform.open(settings, telemetry=telemetry) as oma:
        tenant = await oma.tenants.create(name="turns")
        yield World(oma, telemetry, settings, tenant.id)


def sleeper_pid(root: Path) -> int | None:
    """The pid a ``sleep.pid`` file under ``root`` holds, once written."""
    for path in root.rglob("sleep.pid"):
        value = path.read_text().strip()
        if value:
            return int(value)
    return None


async def poll(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, every: float = 0.02) -> None:
    """Wait until ``check()`` is true (``TimeoutError`` after ``timeout`` seconds): for states that no event
    announces (a file in the sandbox, a stream's chunks)."""
    with anyio.fail_after(timeout):
        for _ in iter(int, 1):
            if await check():
                return
            await anyio.sleep(every)


def tool_use(name: str, input: dict[str, Any], id: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}
