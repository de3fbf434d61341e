"""openma: an embeddable SDK for building managed-agent platforms.

    import openma

    async with openma.Platform.open(openma.Settings()) as oma:
        tenant = await oma.tenants.create(name="acme")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="coder", model="claude-sonnet-4-6")

The public API is flat and re-exported here; everything else is internal unless documented.
"""

from openma.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    LeaseLost,
    NotFound,
    OpenmaError,
    SandboxError,
    SandboxTimeout,
    SessionBusy,
    StorageUnavailable,
    VersionConflict,
)
from openma.models import Agent, AgentVersion, Environment, Page, Tenant
from openma.platform import Platform, TenantScope
from openma.settings import Settings

__version__ = "0.1.0.dev0"

__all__ = [
    "Agent",
    "AgentVersion",
    "ConfigError",
    "Conflict",
    "Environment",
    "InvalidInput",
    "LeaseLost",
    "NotFound",
    "OpenmaError",
    "Page",
    "Platform",
    "SandboxError",
    "SandboxTimeout",
    "SessionBusy",
    "Settings",
    "StorageUnavailable",
    "Tenant",
    "TenantScope",
    "VersionConflict",
    "__version__",
]
