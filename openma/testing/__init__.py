"""The conformance kit: pytest mixins that prove an adapter honours openma's ports.

Combine a contract with a fixture that yields the adapter (see each contract's docstring) and declare the
adapter's ``capabilities``; tests for undeclared capabilities are skipped with the reason. openma's own
adapters are tested through these same classes.
"""

from openma.testing.actor import ActorContract, BackendFactory
from openma.testing.agents import AgentStoreContract
from openma.testing.blobs import BlobStoreContract
from openma.testing.capabilities import KNOWN as KNOWN_CAPABILITIES
from openma.testing.capabilities import requires
from openma.testing.events import EventLogContract
from openma.testing.kv import KVContract
from openma.testing.sandbox import SandboxContract
from openma.testing.stores import EnvironmentStoreContract, TenantStoreContract

__all__ = [
    "KNOWN_CAPABILITIES",
    "ActorContract",
    "BackendFactory",
    "KVContract",
    "AgentStoreContract",
    "BlobStoreContract",
    "EnvironmentStoreContract",
    "EventLogContract",
    "SandboxContract",
    "TenantStoreContract",
    "requires",
]
