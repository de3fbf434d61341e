"""A store backend: one database (or service) that can hold some or all of the stores.

A backend is opened by the factory registered under its name (``openma.store_backends`` entry points, see
:mod:`openma.registry`): ``await factory(settings) -> StoreBackend``. The platform opens each backend named
in ``STORE_BACKENDS`` once and asks it for the stores assigned to it. A backend that cannot hold a store
raises ``ConfigError`` from that store's method.
"""

from __future__ import annotations

from typing import Protocol

from openma.ports.agents import AgentStore
from openma.ports.blobs import BlobStore
from openma.ports.environments import EnvironmentStore
from openma.ports.kv import KVStore
from openma.ports.sealing import Sealer
from openma.ports.session_secrets import SessionSecretStore
from openma.ports.sessions import SessionStore
from openma.ports.tenancy import TenantRef
from openma.ports.tenants import TenantStore
from openma.ports.usage import UsageStore
from openma.ports.vaults import CredentialStore, VaultStore


class SessionSettings(Protocol):
    """What :meth:`StoreBackend.sessions` reads of the settings (``openma.Settings`` has both)."""

    @property
    def event_spill_bytes(self) -> int: ...

    @property
    def sqlite_poll_interval(self) -> float: ...


class StoreBackend(Protocol):
    #: The registry name this backend was opened as (``"cf"``, ``"pg"``, ...).
    name: str

    @property
    def tenants(self) -> TenantStore: ...

    def agents(self, tenant: TenantRef) -> AgentStore: ...

    def environments(self, tenant: TenantRef) -> EnvironmentStore: ...

    def kv(self, tenant: TenantRef) -> KVStore: ...

    def vaults(self, tenant: TenantRef) -> VaultStore: ...

    def usage(self, tenant: TenantRef) -> UsageStore:
        """The tenant's usage ledger (see :mod:`openma.ports.usage`)."""
        ...

    def credentials(self, tenant: TenantRef, keys: Sealer) -> CredentialStore:
        """Credentials, sealed and opened with ``keys`` (the platform's key ring)."""
        ...

    def session_secrets(self, tenant: TenantRef, keys: Sealer) -> SessionSecretStore:
        """Per-session secrets, in the same store as the sessions (deleted with them)."""
        ...

    def sessions(
        self, tenant: TenantRef, *, blobs: BlobStore | None = None, settings: SessionSettings | None = None
    ) -> SessionStore:
        """Sessions with their event logs, inboxes and streams; events above the spill threshold go to ``blobs``."""
        ...

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied (empty when up to date)."""
        ...

    async def aclose(self) -> None: ...
