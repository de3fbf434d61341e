"""openma: an embeddable SDK for building managed-agent platforms.

    import openma

    async with openma.Platform.open(openma.Settings()) as oma:
        tenant = await oma.tenants.create(name="acme")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="coder", model="claude-sonnet-4-6")

The public API is flat and re-exported here; everything else is internal unless documented.
"""

from openma import events, sse
from openma.core.actor import SessionActor
from openma.core.sessions import Sessions
from openma.core.tail import EventTail
from openma.core.turns import RetryPolicy, TurnResult
from openma.core.worker import Worker, WorkerState
from openma.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    LeaseLost,
    ModelError,
    NotFound,
    OpenmaError,
    ResyncRequired,
    SandboxError,
    SandboxGone,
    SandboxRateLimited,
    SandboxRestoreFailed,
    SandboxTimeout,
    SecretUnreadable,
    SessionBusy,
    SpillIntegrityError,
    StorageUnavailable,
    VersionConflict,
)
from openma.models import (
    Agent,
    AgentVersion,
    Credential,
    Environment,
    Event,
    GcReport,
    InboxItem,
    Page,
    Session,
    Stream,
    Tenant,
    Vault,
    to_json,
)
from openma.platform import Platform, TenantScope
from openma.ports.blobs import BlobInfo, BlobReader, BlobStore
from openma.ports.kv import KVEntry, KVStore
from openma.ports.model import Model, ModelRequest
from openma.ports.sandbox import ExecResult, FileInfo, ProcessInfo, Sandbox, SandboxProvider, SandboxSpec, SnapshotRef
from openma.ports.sessions.runnable import ScheduledWakeup
from openma.ports.telemetry import Telemetry
from openma.ports.usage import UsageExport, UsageSlice, UsageStore, UsageSummary, UsageTotal
from openma.settings import Settings

__version__ = "0.1.0.dev0"

__all__ = [
    "Agent",
    "AgentVersion",
    "BlobInfo",
    "BlobReader",
    "BlobStore",
    "ConfigError",
    "Conflict",
    "Credential",
    "Environment",
    "Event",
    "EventTail",
    "ExecResult",
    "FileInfo",
    "GcReport",
    "InboxItem",
    "InvalidInput",
    "KVEntry",
    "KVStore",
    "LeaseLost",
    "Model",
    "ModelError",
    "ModelRequest",
    "NotFound",
    "OpenmaError",
    "Page",
    "Platform",
    "ProcessInfo",
    "ResyncRequired",
    "RetryPolicy",
    "Sandbox",
    "SandboxError",
    "SandboxGone",
    "SandboxProvider",
    "SandboxRateLimited",
    "SandboxRestoreFailed",
    "SandboxSpec",
    "SandboxTimeout",
    "ScheduledWakeup",
    "SecretUnreadable",
    "Session",
    "SessionActor",
    "SessionBusy",
    "Sessions",
    "Settings",
    "SnapshotRef",
    "SpillIntegrityError",
    "StorageUnavailable",
    "Stream",
    "Telemetry",
    "Tenant",
    "TenantScope",
    "TurnResult",
    "UsageExport",
    "UsageSlice",
    "UsageStore",
    "UsageSummary",
    "UsageTotal",
    "Vault",
    "VersionConflict",
    "Worker",
    "WorkerState",
    "__version__",
    "events",
    "sse",
    "to_json",
]
