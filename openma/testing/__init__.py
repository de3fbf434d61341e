"""The conformance kit: pytest mixins that prove an adapter honours openma's ports, and fakes for host tests.

Combine a contract with a fixture that yields the adapter (see each contract's docstring) and declare the
adapter's ``capabilities``; tests for undeclared capabilities are skipped with the reason. openma's own
adapters are tested through these same classes.

``MemoryTelemetry`` keeps every telemetry event in memory (``records``, and ``of(kind)`` for one kind's
fields), so a host's test can pass ``telemetry=MemoryTelemetry()`` to ``Platform.open`` and assert on what
openma reported.
"""

from openma.adapters.telemetry import MemoryTelemetry, TelemetryRecord
from openma.testing.actor import ActorContract, BackendFactory
from openma.testing.blobs import BlobStoreContract
from openma.testing.capabilities import KNOWN as KNOWN_CAPABILITIES
from openma.testing.capabilities import requires
from openma.testing.events import EventLogContract
from openma.testing.kv import KVContract
from openma.testing.sandbox import SandboxContract
from openma.testing.stores import AgentStoreContract, EnvironmentStoreContract, TenantStoreContract

__all__ = [
    "KNOWN_CAPABILITIES",
    "ActorContract",
    "AgentStoreContract",
    "BackendFactory",
    "BlobStoreContract",
    "EnvironmentStoreContract",
    "EventLogContract",
    "KVContract",
    "MemoryTelemetry",
    "SandboxContract",
    "TelemetryRecord",
    "TenantStoreContract",
    "requires",
]
