"""The conformance kit: pytest mixins that prove an adapter honours openma's ports, and fakes for host tests.

Combine a contract with a fixture that yields the adapter (see each contract's docstring) and declare the
adapter's capabilities. openma's own adapters are tested through these same classes.

Capabilities, one style for every kit (stores, kv, event log, actor, blobs, sandbox): the *test class*
declares them, ``capabilities = {"transactions", "trio"}`` (a subset of :data:`KNOWN_CAPABILITIES`), or,
when one class runs several adapters through a parametrized fixture, provides an ``adapter_capabilities``
fixture whose value replaces the attribute. Contract tests marked ``@requires(...)`` are skipped, with the
reason, for what is not declared; on trio every test is skipped unless ``trio`` is declared. Where the port
also makes the adapter report its capabilities at run time (``Sandbox.capabilities``, which the core reads;
a blob store's ``capabilities``), the kit checks the test class claims nothing the adapter does not report
(``trio`` aside). See :mod:`openma.testing.capabilities`.

``MemoryTelemetry`` keeps every telemetry event in memory (``records``, and ``of(kind)`` for one kind's
fields), so a host's test can pass ``telemetry=MemoryTelemetry()`` to ``Platform.open`` and assert on what
openma reported.
"""

from openma.adapters.telemetry import MemoryTelemetry, TelemetryRecord
from openma.testing.actor import ActorContract, BackendFactory
from openma.testing.agents import AgentStoreContract
from openma.testing.blobs import BlobStoreContract
from openma.testing.capabilities import KNOWN as KNOWN_CAPABILITIES
from openma.testing.capabilities import requires
from openma.testing.events import EventLogContract
from openma.testing.kv import KVContract
from openma.testing.model import Scripted, ScriptedModel
from openma.testing.sandbox import SandboxContract
from openma.testing.stores import EnvironmentStoreContract, TenantStoreContract
from openma.testing.vaults import CredentialContract, VaultContract

__all__ = [
    "KNOWN_CAPABILITIES",
    "ActorContract",
    "AgentStoreContract",
    "BackendFactory",
    "BlobStoreContract",
    "CredentialContract",
    "EnvironmentStoreContract",
    "EventLogContract",
    "KVContract",
    "MemoryTelemetry",
    "SandboxContract",
    "Scripted",
    "ScriptedModel",
    "TelemetryRecord",
    "TenantStoreContract",
    "VaultContract",
    "requires",
]
