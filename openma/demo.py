"""The main job on the embedded default: what ``python -m openma demo`` runs.

Opens SQLite, local files and the local sandbox under ``./.openma`` (or what the environment says) and runs
one whole session turn the way a host would:

1. a tenant, an agent (updated once, to show versioning) and an environment;
2. a session, and a user message posted to its inbox;
3. the session's actor: promotes the message, goes ``running``, streams a model reply in chunks, calls a
   ``bash`` tool that really runs in the session's sandbox, logs the result and the final message, and goes
   back to ``idle``;
4. prints the session's event log, as a live tail would have delivered it.

Safe to run repeatedly: each run adds a new tenant and leaves the others alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openma.platform import Platform
from openma.settings import Settings


def _text(event_data: dict[str, Any]) -> str:
    content = event_data.get("content")
    if isinstance(content, str):
        return content
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            return str(block.get("text", ""))
    return ""


async def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> dict[str, str]:
    async with Platform.open(settings) as oma:
        echo(f"opened {oma!r}")
        tenant = await oma.tenants.create(name="demo", metadata={"source": "openma demo"})
        echo(f"created tenant      {tenant.id}  name={tenant.name!r}")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(
            name="coder",
            model="claude-sonnet-4-6",
            system="You are a careful coding agent.",
            tools=[{"type": "agent_toolset_20260401"}],
            metadata={"team": "platform"},
        )
        echo(f"created agent       {agent.id}  model={agent.model_id} version={agent.version}")
        agent = await t.agents.update(agent.id, expected_version=1, system="You are a careful, terse coding agent.")
        echo(f"updated agent       {agent.id}  version={agent.version}")
        env = await t.environments.create(name="python", config={"env": {"PROJECT": "openma-demo"}})
        echo(f"created environment {env.id}  name={env.name!r}")
        versions = await t.agents.versions(agent.id)
        echo(f"agent history       {[v.version for v in versions]}")

        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, title="demo")
        echo(f"created session     {session.id}  status={session.status}")
        await t.sessions.post(
            session.id, [{"type": "user.message", "content": [{"type": "text", "text": "What machine is this?"}]}]
        )
        echo("posted              user.message to the inbox")

        async with t.sessions.actor(session.id) as actor:
            echo(f"acquired actor      epoch={actor.epoch}")
            promoted = await actor.promote()
            await actor.set_status("running")
            stream = await actor.open_stream(message_id="msg_demo_1")
            reply = ["Let me ", "check ", "the machine."]
            await actor.append_stream(stream.id, reply)
            await actor.finalize_stream(stream.id, "completed")
            await actor.append(
                [
                    {
                        "type": "agent.message",
                        "message_id": "msg_demo_1",
                        "content": [{"type": "text", "text": "".join(reply)}],
                    }
                ]
            )
            command = 'uname -sm && echo "project=$PROJECT" > note.txt && cat note.txt'
            tool_use = {"type": "agent.tool_use", "id": "tu_demo_1", "name": "bash", "input": {"command": command}}
            await actor.append([tool_use])
            sandbox = await actor.sandbox()
            result = await sandbox.exec(command, timeout=30)
            echo(
                f"sandbox exec        exit={result.exit_code} in {result.duration * 1000:.0f} ms: "
                f"{result.stdout.strip().replace(chr(10), ' | ')}"
            )
            await actor.append(
                [
                    {
                        "type": "agent.tool_result",
                        "tool_use_id": "tu_demo_1",
                        "content": result.stdout,
                        "is_error": not result.ok,
                    },
                    {"type": "agent.message", "content": [{"type": "text", "text": f"It is: {result.stdout.strip()}"}]},
                ]
            )
            await actor.set_status("idle", stop_reason={"type": "end_turn"})
            echo(f"turn done           promoted {len(promoted)} input(s), session is idle")

        page = await t.sessions.events(session.id, after=0, limit=100)
        echo(f"event log           {len(page)} events")
        for event in page:
            detail = _text(event.data) or event.data.get("name") or event.data.get("stop_reason", "") or ""
            echo(f"  #{event.seq:<3} {event.type:<26} {' | '.join(str(detail).split(chr(10)))[:60]}")
        tenants = await oma.tenants.list(limit=500)
        more = "+" if tenants.next_cursor else ""
        echo(f"tenants in the database: {len(tenants)}{more}")
        return {"tenant": tenant.id, "agent": agent.id, "environment": env.id, "session": session.id}
