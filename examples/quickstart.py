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
        await t.environments.create(name="py", config={"packages": {"pip": ["pytest"]}})
        try:
            await t.agents.update(agent.id, expected_version=1, system="a lost update")
        except openma.VersionConflict as exc:
            print(f"refused a stale update: {exc.code} (expected {exc.expected}, actual {exc.actual})")
        page = await t.agents.list(limit=50)
        print(f"agent {agent.id} is at version {agent.version}; agents: {[a.name for a in page]}")


if __name__ == "__main__":
    anyio.run(main)
