"""The composition root: open the configured backends and hand out tenant-scoped stores.

``Platform.open(settings)`` resolves, for each store, the backend named in ``STORE_BACKENDS`` through the
registry (:mod:`openma.registry`), opens every distinct backend once, migrates it (unless
``auto_migrate`` is off), and closes them all on exit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from openma import registry
from openma.adapters.telemetry import LoggingTelemetry
from openma.core.ids import check_id
from openma.core.sessions import Sessions
from openma.errors import ConfigError, Conflict
from openma.models import Tenant
from openma.ports.agents import AgentStore
from openma.ports.backend import StoreBackend
from openma.ports.blobs import BlobStore
from openma.ports.environments import EnvironmentStore
from openma.ports.kv import KVStore
from openma.ports.telemetry import Telemetry
from openma.ports.tenancy import TenantRef
from openma.ports.tenants import TenantStore
from openma.settings import STORE_NAMES, Settings

if TYPE_CHECKING:
    from openma.adapters.fsspec_blobs import FsspecBlobStore
    from openma.core.orchestrator import SandboxOrchestrator


class TenantScope:
    """Every store of one tenant. Built by :meth:`Platform.tenant`; cheap, so build one per request."""

    def __init__(self, platform: Platform, tenant_id: str) -> None:
        self._platform = platform
        self.tenant_id = tenant_id
        self._ref = TenantRef(tenant_id, self._check)
        self._agents: AgentStore | None = None
        self._environments: EnvironmentStore | None = None
        self._kv: KVStore | None = None
        self._blobs: BlobStore | None = None
        self._sessions: Sessions | None = None

    def __repr__(self) -> str:
        return f"TenantScope({self.tenant_id!r})"

    async def _check(self) -> None:
        tenant = await self._platform.tenants.get(self.tenant_id)
        if tenant.archived_at is not None:
            raise Conflict(f"tenant {self.tenant_id} is archived", tenant_id=self.tenant_id)

    @property
    def agents(self) -> AgentStore:
        if self._agents is None:
            self._agents = self._platform.backend("agents").agents(self._ref)
        return self._agents

    @property
    def environments(self) -> EnvironmentStore:
        if self._environments is None:
            self._environments = self._platform.backend("environments").environments(self._ref)
        return self._environments

    @property
    def kv(self) -> KVStore:
        if self._kv is None:
            self._kv = self._platform.backend("kv").kv(self._ref)
        return self._kv

    @property
    def blobs(self) -> BlobStore:
        """This tenant's blobs: every key lives under ``t/<tenant_id>/`` of the platform's blob store."""
        if self._blobs is None:
            self._blobs = self._platform.blobs.for_tenant(self.tenant_id, ensure=self._ref.ensure)
        return self._blobs

    @property
    def sessions(self) -> Sessions:
        """This tenant's sessions and their event logs; spilled events go to :attr:`blobs`."""
        if self._sessions is None:
            try:
                blobs: BlobStore | None = self.blobs
            except ConfigError:  # a platform built without a blob store: events cannot spill
                blobs = None
            backend = self._platform.backend("sessions")
            store = backend.sessions(self._ref, blobs=blobs, settings=self._platform.settings)
            lease_lock = backend.lease_lock() if hasattr(backend, "lease_lock") else None
            self._sessions = Sessions(
                store,
                self.agents,
                self.environments,
                lease_lock=lease_lock,
                telemetry=self._platform.telemetry,
                sandboxes=self._platform.sandboxes,
                opened_sandboxes=lambda: self._platform._orchestrator,
            )
        return self._sessions


class Platform:
    """An open openma platform: the backends of every store, and the tenant-scoped facade."""

    def __init__(
        self,
        settings: Settings,
        backends: dict[str, StoreBackend],
        blobs: FsspecBlobStore | None = None,
        *,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self._backends = backends
        self._blobs = blobs
        #: Where structured operational events go (JSON lines on the ``openma.telemetry`` logger by default).
        self.telemetry: Telemetry = telemetry or LoggingTelemetry()
        self._orchestrator: SandboxOrchestrator | None = None
        self._orchestrator_lock = anyio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        placement = {s: self.settings.backend_for(s) for s in STORE_NAMES}
        return f"Platform(backends={sorted(self._backends)}, stores={placement})"

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings | None = None, *, telemetry: Telemetry | None = None
    ) -> AsyncIterator[Platform]:
        """Open a platform for the duration of an ``async with`` block."""
        platform = await cls.connect(settings, telemetry=telemetry)
        try:
            yield platform
        finally:
            with anyio.CancelScope(shield=True):
                await platform.aclose()

    @classmethod
    async def connect(cls, settings: Settings | None = None, *, telemetry: Telemetry | None = None) -> Platform:
        """Open a platform and return it; call :meth:`aclose` when done (handy in notebooks)."""
        settings = settings or Settings()
        names = sorted({settings.backend_for(store) for store in STORE_NAMES})
        backends: dict[str, StoreBackend] = {}
        from openma.adapters.fsspec_blobs import FsspecBlobStore

        # blob_url is checked before any database file is created, its root made after the backends open.
        blobs = await FsspecBlobStore.from_settings(settings, setup=False)
        try:
            for name in names:
                factory = registry.store_backends.load(name)
                backend = await factory(settings)
                backends[name] = backend
                if settings.auto_migrate:
                    await backend.migrate()
            await blobs.setup()
        except BaseException:
            with anyio.CancelScope(shield=True):
                for backend in backends.values():
                    await backend.aclose()
                await blobs.aclose()
            raise
        return cls(settings, backends, blobs, telemetry=telemetry)

    def backend(self, store: str) -> StoreBackend:
        """The backend that holds ``store`` (``"agents"``, ``"sessions"``, ...)."""
        if self._closed:
            raise ConfigError("this platform is closed")
        return self._backends[self.settings.backend_for(store)]

    @property
    def backends(self) -> dict[str, StoreBackend]:
        return dict(self._backends)

    @property
    def blobs(self) -> FsspecBlobStore:
        """The whole blob store (admin level: every tenant's keys, under ``t/<tenant_id>/``)."""
        if self._closed:
            raise ConfigError("this platform is closed")
        if self._blobs is None:
            raise ConfigError("this platform was built without a blob store")
        return self._blobs

    @property
    def tenants(self) -> TenantStore:
        """The tenants store (admin level: not scoped to a tenant)."""
        return self.backend("tenants").tenants

    def tenant(self, tenant: str | Tenant) -> TenantScope:
        """The stores of one tenant. The tenant's existence is checked on its first write."""
        tenant_id = tenant.id if isinstance(tenant, Tenant) else tenant
        check_id(tenant_id, "tnt", what="tenant_id")
        return TenantScope(self, tenant_id)

    async def sandboxes(self) -> SandboxOrchestrator:
        """The sandbox orchestrator (one sandbox per session), opened on first use from ``settings.sandbox``.

        Snapshots go to the platform's blob store under ``sandbox-snapshots/<tenant>/<session>/``.
        """
        if self._closed:
            raise ConfigError("this platform is closed")
        async with self._orchestrator_lock:
            if self._orchestrator is None:
                from openma.core.orchestrator import SandboxOrchestrator

                factory = registry.sandboxes.load(self.settings.sandbox)
                provider = await factory(self.settings, blobs=self._blobs)
                self._orchestrator = SandboxOrchestrator(provider, self._blobs, self.telemetry)
            return self._orchestrator

    async def migrate(self) -> dict[str, list[str]]:
        """Apply pending migrations on every backend; return what each applied."""
        return {name: await backend.migrate() for name, backend in self._backends.items()}

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        if self._orchestrator is not None:
            try:
                await self._orchestrator.aclose()
                await self._orchestrator.provider.aclose()
            except Exception as exc:
                errors.append(exc)
        for backend in self._backends.values():
            try:
                await backend.aclose()
            except Exception as exc:  # close the others anyway
                errors.append(exc)
        if self._blobs is not None:
            try:
                await self._blobs.aclose()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Platform:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
