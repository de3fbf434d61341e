"""The quick start of the README, runnable: ``python examples/quickstart.py``."""

from __future__ import annotations

import anyio

import openma


async def main() -> None:
    async with openma.Platform.open(openma.Settings.from_env()) as oma:
        tenant = await oma.tenants.create(name="acme")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="coder", model="claude-sonnet-4-6", system="Be careful.")
        agent = await t.agents.update(agent.id, expected_version=1, system="Be careful and brief.")
        try:
            await t.agents.update(agent.id, expected_version=1, system="a lost update")
        except openma.VersionConflict as exc:
            print(f"refused a stale update: {exc.code} (expected {exc.expected}, actual {exc.actual})")
        env = await t.environments.create(name="py", config={"env": {"PROJECT": "demo"}})
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, title="demo")
        await t.sessions.post(session.id, [{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}])
        async with t.sessions.actor(session.id) as actor:
            await actor.promote()
            await actor.set_status("running")
            sandbox = await actor.sandbox()
            result = await sandbox.exec('echo "$PROJECT on $(uname -s)"', timeout=30)
            await actor.append([{"type": "agent.message", "content": [{"type": "text", "text": result.stdout}]}])
            await actor.set_status("idle", stop_reason={"type": "end_turn"})
        page = await t.sessions.events(session.id, after=0, limit=100)
        print([(e.seq, e.type) for e in page])


if __name__ == "__main__":
    anyio.run(main)
