"""The main job on the embedded default: what ``python -m openma demo`` runs.

Opens SQLite + local files under ``./.openma`` (or what the environment says), creates a tenant, an agent
(then updates it, to show versioning), an environment, and prints what it did. Safe to run repeatedly:
each run adds a new tenant and leaves the others alone.
"""

from __future__ import annotations

from collections.abc import Callable

from openma.platform import Platform
from openma.settings import Settings


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
        env = await t.environments.create(
            name="python", config={"sandbox": settings.sandbox, "packages": {"pip": ["pytest"]}}
        )
        echo(f"created environment {env.id}  name={env.name!r}")
        versions = await t.agents.versions(agent.id)
        echo(f"agent history       {[v.version for v in versions]}")
        tenants = await oma.tenants.list(limit=500)
        more = "+" if tenants.next_cursor else ""
        echo(f"tenants in the database: {len(tenants)}{more}")
        return {"tenant": tenant.id, "agent": agent.id, "environment": env.id}
