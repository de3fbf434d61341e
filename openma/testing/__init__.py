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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from openma.testing.usage import UsageContract
    from openma.testing.vaults import CredentialContract, VaultContract

#: Where each public name lives. Names load on first use, so the fakes a host's code or the demo needs
#: (``ScriptedModel``, ``MemoryTelemetry``) import without pytest, which only the contracts need.
_WHERE: dict[str, tuple[str, str]] = {
    "MemoryTelemetry": ("openma.adapters.telemetry", "MemoryTelemetry"),
    "TelemetryRecord": ("openma.adapters.telemetry", "TelemetryRecord"),
    "ActorContract": ("openma.testing.actor", "ActorContract"),
    "BackendFactory": ("openma.testing.actor", "BackendFactory"),
    "AgentStoreContract": ("openma.testing.agents", "AgentStoreContract"),
    "BlobStoreContract": ("openma.testing.blobs", "BlobStoreContract"),
    "KNOWN_CAPABILITIES": ("openma.testing.capabilities", "KNOWN"),
    "requires": ("openma.testing.capabilities", "requires"),
    "EventLogContract": ("openma.testing.events", "EventLogContract"),
    "KVContract": ("openma.testing.kv", "KVContract"),
    "Scripted": ("openma.testing.model", "Scripted"),
    "ScriptedModel": ("openma.testing.model", "ScriptedModel"),
    "SandboxContract": ("openma.testing.sandbox", "SandboxContract"),
    "EnvironmentStoreContract": ("openma.testing.stores", "EnvironmentStoreContract"),
    "TenantStoreContract": ("openma.testing.stores", "TenantStoreContract"),
    "UsageContract": ("openma.testing.usage", "UsageContract"),
    "CredentialContract": ("openma.testing.vaults", "CredentialContract"),
    "VaultContract": ("openma.testing.vaults", "VaultContract"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'openma.testing' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "UsageContract",
    "VaultContract",
    "requires",
]
