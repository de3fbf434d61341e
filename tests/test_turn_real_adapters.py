"""A turn whose model is found from the agent's ``model`` (no ``model=`` given): the platform resolves it
through the settings and the models registry, opens the real SDK adapter once, and closes it with the
platform. Runs against the local fake servers of each provider, a bash tool call included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from openma import Platform, Settings
from openma.errors import ConfigError
from tests.fakes import anthropic_server, openai_server
from tests.fakes._sse_app import Reply

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["anthropic", "openai"])
def fake(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    server = anthropic_server.FakeAnthropic() if request.param == "anthropic" else openai_server.FakeOpenAI()
    with server:
        yield request.param, server


def _settings(tmp_path: Path, provider: str, server: Any) -> Settings:
    keys: dict[str, Any] = (
        {"anthropic_api_key": server.API_KEY, "anthropic_base_url": server.url}
        if provider == "anthropic"
        else {"openai_api_key": server.API_KEY, "openai_base_url": server.url}
    )
    return Settings(
        sqlite_path=str(tmp_path / "openma.db"),
        blob_url=f"file://{tmp_path}/blobs",
        local_sandbox_root=str(tmp_path / "sandboxes"),
        **keys,
    )


def _frames(provider: str, blocks: list[dict[str, Any]]) -> Reply:
    if provider == "anthropic":
        return Reply(frames=anthropic_server.message(blocks))
    return Reply(frames=openai_server.completion(blocks))


async def test_run_without_a_model_uses_the_agents_model_through_the_registry(
    tmp_path: Path, fake: tuple[str, Any]
) -> None:
    provider, server = fake
    model_name = "claude-sonnet-4-5" if provider == "anthropic" else "gpt-4.1"
    server.reply(
        _frames(provider, [{"type": "tool_use", "id": "call_1", "name": "bash", "input": {"command": "echo hi"}}]),
        _frames(provider, [{"type": "text", "text": "it printed hi"}]),
    )
    async with Platform.open(_settings(tmp_path, provider, server)) as oma:
        t = oma.tenant((await oma.tenants.create(name="real")).id)
        agent = await t.agents.create(
            name="a", model=model_name, system="be brief", tools=[{"type": "agent_toolset_20260401"}]
        )
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        await t.sessions.post(session.id, [{"type": "user.message", "content": [{"type": "text", "text": "go"}]}])
        result = await t.sessions.run(session.id)
        assert result.stop_reason == "end_turn"
        events = (await t.sessions.events(session.id, limit=1000)).items
        results = [e.data for e in events if e.type == "agent.tool_result"]
        assert len(results) == 1 and "hi" in str(results[0])
        messages = [e.data for e in events if e.type == "agent.message"]
        assert "it printed hi" in str(messages[-1])
        assert len(server.requests) == 2
        # The second call carried the tool's output back to the provider, in its own format.
        assert "hi" in str(server.requests[1].body)
        assert model_name in str(server.requests[0].body)
        opened = list(oma._models.values())
        assert len(opened) == 1 and opened[0].name == provider


async def test_run_without_a_model_and_no_key_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(
        sqlite_path=str(tmp_path / "openma.db"),
        blob_url=f"file://{tmp_path}/blobs",
        local_sandbox_root=str(tmp_path / "sandboxes"),
        anthropic_api_key=None,
    )
    async with Platform.open(settings) as oma:
        t = oma.tenant((await oma.tenants.create(name="real")).id)
        agent = await t.agents.create(name="a", model="claude-sonnet-4-5")
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        await t.sessions.post(session.id, [{"type": "user.message", "content": [{"type": "text", "text": "go"}]}])
        with pytest.raises(ConfigError) as raised:
            await t.sessions.run(session.id)
        assert "ANTHROPIC_API_KEY" in str(raised.value)


async def test_the_demo_uses_a_live_model_when_one_is_configured(tmp_path: Path) -> None:
    """``OPENMA_MODEL`` set (with its key): the demo's turn is answered by that provider, here the local fake."""
    from openma.demo import COMMAND, run_demo

    with anthropic_server.FakeAnthropic() as server:
        look = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": COMMAND}}
        server.reply(_frames("anthropic", [look]), _frames("anthropic", [{"type": "text", "text": "done looking"}]))
        settings = attrs.evolve(_settings(tmp_path, "anthropic", server), model="anthropic:claude-fake")
        lines: list[str] = []
        await run_demo(settings, echo=lines.append)
        assert any("model               anthropic" in line for line in lines), lines
        assert any("done looking" in line for line in lines), lines
        assert len(server.requests) == 2 and "this workspace has seen 1 run(s)" in str(server.requests[1].body)
