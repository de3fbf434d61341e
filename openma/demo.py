"""The main job on the embedded default: what ``python -m openma demo`` runs.

Opens SQLite, local files and the local sandbox under ``./.openma`` (or what the environment says) and runs
one whole session turn the way a host would:

1. the demo tenant with an agent (updated once, to show versioning), an environment and a session, made on
   the first run and found again (through the tenant's KV store) on the next ones;
2. a user message posted to the session's inbox, while a subscriber tails the log and prints each event as
   it lands;
3. ``t.sessions.run`` runs the turn through the loop with a scripted model (:class:`ScriptedModel`): the
   model's reply is streamed in chunks, its ``bash`` call runs in the session's sandbox, the tool's result
   is fed back, and the model's final message reports it; then the session goes back to ``idle``;
4. releasing the actor snapshots the workspace; the next run warms a new sandbox from that snapshot, so the
   workspace's run counter keeps counting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from openma.adapters.telemetry import FanoutTelemetry, LoggingTelemetry, MemoryTelemetry
from openma.core.sessions import Sessions
from openma.core.turns import TurnResult
from openma.models import Tenant
from openma.platform import Platform, TenantScope
from openma.ports.model import Model, ModelRequest
from openma.settings import Settings
from openma.testing.model import ScriptedModel

DEMO_SOURCE = "openma demo"
COMMAND = (
    'n=$(( $(cat runs.txt 2>/dev/null || echo 0) + 1 )); echo "$n" > runs.txt; '
    'echo "this workspace has seen $n run(s)"; echo "project=$PROJECT on $(uname -sm)"'
)


def _detail(data: dict[str, Any]) -> str:
    content = data.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = next((str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and "text" in b), "")
    text = text or str(data.get("name") or data.get("stop_reason") or data.get("model") or "")
    return " | ".join(text.strip().splitlines())[:70]


async def _demo_tenant(oma: Platform) -> Tenant | None:
    cursor = None
    while True:
        page = await oma.tenants.list(limit=200, cursor=cursor, order="asc")
        for tenant in page:
            if tenant.name == "demo" and tenant.metadata.get("source") == DEMO_SOURCE:
                return tenant
        cursor = page.next_cursor
        if cursor is None:
            return None


async def _first_run(oma: Platform, echo: Callable[[str], None]) -> tuple[TenantScope, str]:
    tenant = await oma.tenants.create(name="demo", metadata={"source": DEMO_SOURCE})
    echo(f"created tenant      {tenant.id}")
    t = oma.tenant(tenant.id)
    agent = await t.agents.create(
        name="coder",
        model="claude-sonnet-4-6",
        system="You are a careful coding agent.",
        tools=[{"type": "agent_toolset_20260401"}],
    )
    agent = await t.agents.update(agent.id, expected_version=1, system="You are a careful, terse coding agent.")
    echo(f"created agent       {agent.id}  model={agent.model_id}, now at version {agent.version}")
    env = await t.environments.create(name="python", config={"env": {"PROJECT": "openma-demo"}})
    echo(f"created environment {env.id}")
    session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, title="demo")
    await t.kv.put("demo/session", session.id)
    echo(f"created session     {session.id}")
    return t, session.id


async def _tail(sessions: Sessions, session_id: str, after: int, echo: Callable[[str], None]) -> None:
    """Print each event as the live tail delivers it, until the turn's idle status."""
    async with sessions.subscribe(session_id, after=after) as tail:
        async for event in tail:
            echo(f"  live #{event.seq:<3} {event.type:<26} {_detail(event.data)}")
            if event.type == "session.status_idle":
                return


def _model() -> ScriptedModel:
    """The demo's model: it looks at the workspace with ``bash``, then reports what the tool printed."""

    def report(request: ModelRequest) -> list[dict[str, Any]]:
        result = request.messages[-1]["content"][-1]
        return [{"type": "text", "text": str(result.get("content", "")).strip()}]

    look = {"type": "tool_use", "id": "toolu_look", "name": "bash", "input": {"command": COMMAND}}
    return ScriptedModel([[{"type": "text", "text": "Let me look at the workspace."}, look], report])


async def _turn(
    sessions: Sessions, session_id: str, echo: Callable[[str], None], live: Model | None = None
) -> TurnResult:
    """One real turn through the loop: the model calls ``bash`` in the session's sandbox and reads its output.

    ``live`` is the model ``OPENMA_MODEL`` names when it is set (with its provider's key); otherwise the demo's
    scripted model plays the part, so the demo runs offline."""
    result = await sessions.run(session_id, model=live or _model())
    usage = f"{result.usage.input_tokens} tokens in, {result.usage.output_tokens} out"
    echo(f"turn                stop_reason={result.stop_reason}, {len(result.events)} events, {usage}")
    return result


async def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> dict[str, str]:
    memory = MemoryTelemetry()
    async with Platform.open(settings, telemetry=FanoutTelemetry([LoggingTelemetry(), memory])) as oma:
        echo(f"opened {oma!r}")
        tenant = await _demo_tenant(oma)
        if tenant is None:
            t, session_id = await _first_run(oma, echo)
        else:
            t = oma.tenant(tenant.id)
            entry = await t.kv.get("demo/session")
            assert entry is not None, "the demo tenant lost its session"
            session_id = str(entry.value)
            echo(f"found tenant        {tenant.id}, session {session_id} (from an earlier run)")
        session = await t.sessions.get(session_id)
        await t.sessions.post(
            session_id,
            [{"type": "user.message", "content": [{"type": "text", "text": "What is in the workspace?"}]}],
        )
        echo(f"posted              a user.message; the log has {session.last_seq} events so far")
        live = None
        if settings.models.default:  # OPENMA_MODEL is set: a real model answers (its key must be set too)
            from openma.adapters.models import open_model

            live = await open_model(settings)
            echo(f"model               {live.name}: {settings.models.default}")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_tail, t.sessions, session_id, session.last_seq, echo)
                await _turn(t.sessions, session_id, echo, live)
        finally:
            if live is not None:
                await live.aclose()
        actions = [f["action"] for f in memory.of("sandbox.lifecycle")]
        echo(f"sandbox             {' -> '.join(actions)}")
        if "restored" in actions:
            echo("                    (the workspace came back from the previous run's snapshot)")
        final = await t.sessions.get(session_id)
        echo(f"session             status={final.status}, {final.last_seq} events in the log")
        return {"tenant": t.tenant_id, "session": session_id}
