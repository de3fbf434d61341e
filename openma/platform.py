"""The composition root: open the configured backends and hand out tenant-scoped stores.

``Platform.open(settings)`` resolves, for each store, the backend named in ``STORE_BACKENDS`` through the
registry (:mod:`openma.registry`), opens every distinct backend once, migrates it (unless
``auto_migrate`` is off), and closes them all on exit. ``Platform.open()`` with no settings reads them
from the environment; ``Platform.from_url(url)`` opens every store in one database.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from openma import registry
from openma.adapters.telemetry_sql import SqlTelemetry, configured_telemetry
from openma.core.ids import check_id
from openma.core.sessions import ModelResolver, Sessions
from openma.core.tenant_blobs import tenant_view
from openma.errors import ConfigError, Conflict
from openma.models import Event, Tenant
from openma.ports.agents import AgentStore
from openma.ports.backend import StoreBackend
from openma.ports.blobs import BlobStore
from openma.ports.environments import EnvironmentStore
from openma.ports.kv import KVStore
from openma.ports.model import Model
from openma.ports.session_secrets import SessionSecretStore
from openma.ports.telemetry import Telemetry
from openma.ports.tenancy import TenantRef
from openma.ports.tenants import TenantStore
from openma.ports.usage import UsageSlice
from openma.ports.vaults import CredentialStore, VaultStore
from openma.settings import STORE_NAMES, Settings

if TYPE_CHECKING:
    from openma.core.egress.service import EgressService
    from openma.core.orchestrator import SandboxOrchestrator
    from openma.core.secrets import KeyRing
    from openma.core.usage import TenantUsage


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
        self._vaults: VaultStore | None = None
        self._credentials: CredentialStore | None = None
        self._session_secrets: SessionSecretStore | None = None
        self._usage: TenantUsage | None = None

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
    def vaults(self) -> VaultStore:
        """This tenant's vaults (``ConfigError`` on a platform without a root secret, see :attr:`Platform.keys`)."""
        if self._vaults is None:
            self._platform.keys  # noqa: B018 (a store holding secrets needs the key ring: fail here, not later)
            self._vaults = self._platform.backend("vaults").vaults(self._ref)
        return self._vaults

    @property
    def credentials(self) -> CredentialStore:
        """This tenant's vault credentials: sealed at rest, redacted by ``get``/``list``, read by ``reveal``."""
        if self._credentials is None:
            self._credentials = self._platform.backend("vaults").credentials(self._ref, self._platform.keys)
        return self._credentials

    @property
    def session_secrets(self) -> SessionSecretStore:
        """Secret values of this tenant's sessions: sealed at rest, deleted with their session."""
        if self._session_secrets is None:
            backend = self._platform.backend("sessions")
            self._session_secrets = backend.session_secrets(self._ref, self._platform.keys)
        return self._session_secrets

    @property
    def usage(self) -> TenantUsage:
        """This tenant's usage ledger: tokens per model, sandbox and session seconds (see docs/usage.md)."""
        if self._usage is None:
            from openma.core.usage import TenantUsage

            async def read_events(session_id: str, after: int, types: Sequence[str]) -> list[Event]:
                return (await self.sessions.events(session_id, after=after, limit=1000, types=types)).items

            self._usage = TenantUsage(self._platform.backend("usage").usage(self._ref), read_events)
        return self._usage

    @property
    def blobs(self) -> BlobStore:
        """This tenant's blobs: every key lives under ``t/<tenant_id>/`` of the platform's blob store.

        openma's own objects of the tenant (spilled events, snapshots) are out of its reach: keys starting
        with ``.openma/`` or ``sessions/`` are ``InvalidInput`` and never listed.
        """
        if self._blobs is None:
            self._blobs = tenant_view(self._platform.blobs, self.tenant_id, ensure=self._ref.ensure)
        return self._blobs

    @property
    def sessions(self) -> Sessions:
        """This tenant's sessions and their event logs; spilled events go to :attr:`blobs`."""
        if self._sessions is None:
            try:  # spills go to the tenant's internal area, which its own blob view cannot name
                blobs: BlobStore | None = tenant_view(
                    self._platform.blobs, self.tenant_id, ensure=self._ref.ensure, internal=True
                )
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
                sandboxes=self._platform.sandbox_orchestrator,
                opened_sandboxes=lambda: self._platform._orchestrator,
                vaults=lambda: self.vaults,
                model_resolver=lambda: self._platform.model_resolver,
                usage=lambda: self.usage,
            )
        return self._sessions


class Platform:
    """An open openma platform: the backends of every store, and the tenant-scoped facade."""

    def __init__(
        self,
        settings: Settings,
        backends: dict[str, StoreBackend],
        blobs: BlobStore | None = None,
        *,
        telemetry: Telemetry | None = None,
        keys: KeyRing | None = None,
        model_resolver: ModelResolver | None = None,
    ) -> None:
        given: object = settings
        if not isinstance(given, Settings):
            raise ConfigError(f"settings must be an openma.Settings, got {type(given).__name__}")
        self.settings = settings
        self._backends = backends
        self._blobs = blobs
        #: The SQL telemetry sink when ``OPENMA_TELEMETRY`` names ``sql`` (flushed in the background, closed here).
        self.telemetry_dataset: SqlTelemetry | None = None
        if telemetry is None:
            telemetry, self.telemetry_dataset = configured_telemetry(settings, backends)
        #: Where structured operational events go: ``telemetry`` when given, else the sinks ``OPENMA_TELEMETRY``
        #: names (JSON lines on the ``openma.telemetry`` logger by default; see docs/telemetry.md).
        self.telemetry: Telemetry = telemetry
        for backend in backends.values():  # backends report what they recover from (silent_catch) here too
            if hasattr(backend, "telemetry"):
                backend.telemetry = self.telemetry
        #: Picks the model of ``t.sessions.run(..., model=None)`` from a session's agent snapshot (assignable).
        #: By default the agent's ``model`` is resolved through the settings and the models registry
        #: (:func:`openma.adapters.models.open_model`), one adapter per provider and model, closed with the platform.
        self.model_resolver: ModelResolver | None = model_resolver or self._open_agent_model
        self._models: dict[tuple[str, str], Model] = {}
        self._models_lock = anyio.Lock()
        self._orchestrator: SandboxOrchestrator | None = None
        self._orchestrator_lock = anyio.Lock()
        self._task_group: TaskGroup | None = None
        self._closed = False
        self._keys = keys
        self._egress: EgressService | None = None

    async def flush_telemetry(self) -> None:
        """Write what the SQL telemetry sink holds now (it also flushes in the background and on close)."""
        if self.telemetry_dataset is not None:
            await self.telemetry_dataset.flush()

    async def _open_agent_model(self, agent: dict[str, Any]) -> Model:
        """The adapter for an agent snapshot's ``model`` (``OPENMA_MODEL`` when it names none), opened once."""
        from openma.adapters.models import open_resolved, resolve_model

        resolved = resolve_model(self.settings, agent.get("model"))
        async with self._models_lock:
            key = (resolved.provider, resolved.id)
            if key not in self._models:
                self._models[key] = await open_resolved(self.settings, resolved)
            return self._models[key]

    @property
    def keys(self) -> KeyRing:
        """The key ring that seals the stored secrets (see :mod:`openma.keyfile` for where it comes from).

        ``ConfigError`` when no root secret is configured and the embedded default's key file does not
        apply (the vault store is on a shared backend): set ``OPENMA_ROOT_SECRET``.
        """
        if self._keys is None:
            from openma.keyfile import load_key_ring, missing_root_secret

            self._keys = load_key_ring(self.settings)
            if self._keys is None:
                raise missing_root_secret(self.settings)
        return self._keys

    def __repr__(self) -> str:
        placement = {s: self.settings.backend_for(s) for s in STORE_NAMES}
        return f"Platform(backends={sorted(self._backends)}, stores={placement})"

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings | None = None,
        *,
        telemetry: Telemetry | None = None,
        model_resolver: ModelResolver | None = None,
    ) -> AsyncIterator[Platform]:
        """Open a platform for the duration of an ``async with`` block.

        Background work of the platform (the sandbox upkeep loop) runs in a task group of this block and
        stops with it; an error of the block comes out as it was raised.

        With no ``settings``, they are read from the environment (:meth:`Settings.from_env`), as the command
        line does, so a program and ``python -m openma doctor`` use the same databases.
        """
        platform = await cls.connect(settings, telemetry=telemetry, model_resolver=model_resolver)
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as task_group:
                platform._task_group = task_group
                if platform.telemetry_dataset is not None:
                    await task_group.start(platform.telemetry_dataset.run)
                try:
                    yield platform
                except Exception as exc:  # re-raised below, outside the task group (so never wrapped)
                    failure = exc
                finally:
                    platform._task_group = None
                    task_group.cancel_scope.cancel()
            if failure is not None:
                raise failure
        except BaseException as exc:  # the block's error stays the one raised; close failures become notes
            with anyio.CancelScope(shield=True):
                try:
                    await platform.aclose()
                except BaseException as close_error:
                    exc.add_note(f"closing the platform also failed: {close_error!r}")
            raise
        with anyio.CancelScope(shield=True):
            await platform.aclose()

    @classmethod
    def from_url(
        cls, url: str, *, telemetry: Telemetry | None = None, **settings: Any
    ) -> AbstractAsyncContextManager[Platform]:
        """``async with Platform.from_url("sqlite:///app.db") as oma:``: every store in the database ``url``.

        ``url`` is read by :meth:`Settings.from_url` (``sqlite:///path.db``, ``postgresql://...``); keyword
        arguments set other :class:`Settings` fields. A bad URL is a :class:`ConfigError` raised here.
        """
        return cls.open(Settings.from_url(url, **settings), telemetry=telemetry)

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        telemetry: Telemetry | None = None,
        model_resolver: ModelResolver | None = None,
    ) -> Platform:
        """Open a platform and return it; call :meth:`aclose` when done (handy in notebooks).

        With no ``settings``, they are read from the environment (:meth:`Settings.from_env`).
        """
        given: object = settings
        if settings is None:
            settings = Settings.from_env()
        elif not isinstance(given, Settings):
            hint = "; to open a database URL use Platform.from_url(url)" if isinstance(given, str) else ""
            raise ConfigError(f"settings must be an openma.Settings, got {type(given).__name__}{hint}")
        from openma.keyfile import key_file_applies, load_key_ring, missing_root_secret

        # A bad root secret is a ConfigError before anything opens; a generated key file is made (or read)
        # once the backends are open, so a configuration refused by them leaves no file behind.
        keys = load_key_ring(settings) if settings.root_secret is not None else None
        names = sorted({settings.backend_for(store) for store in STORE_NAMES})
        factories = {name: registry.store_backends.load(name) for name in names}  # a missing extra, first
        if settings.root_secret is None and not key_file_applies(settings):
            # Stores holding secrets on a shared backend: every host must derive the same keys, so the root
            # secret is required before anything opens (the embedded default generates its own key file).
            raise missing_root_secret(settings)
        backends: dict[str, StoreBackend] = {}
        # blob_url is checked before any database file is created, the store set up after the backends open.
        blobs: BlobStore = await registry.blob_stores.load(registry.blob_store_name(settings.blob_url))(settings)
        try:
            for name in names:
                backend = await factories[name](settings)
                backends[name] = backend
                if settings.auto_migrate:
                    await backend.migrate()
            setup = getattr(blobs, "setup", None)
            if setup is not None:
                await setup()
            if keys is None:
                keys = load_key_ring(settings)
            platform = cls(settings, backends, blobs, telemetry=telemetry, keys=keys, model_resolver=model_resolver)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                for backend in backends.values():
                    try:
                        await backend.aclose()
                    except Exception as close_exc:  # the open error matters more; keep closing the others
                        exc.add_note(f"also failed to close backend {backend.name!r}: {close_exc!r}")
                try:
                    await _aclose(blobs)
                except Exception as close_exc:
                    exc.add_note(f"also failed to close the blob store: {close_exc!r}")
            raise
        if settings.egress_mode == "off":
            logging.getLogger("openma.egress").warning(
                "OPENMA_EGRESS=off: sandboxes reach the network directly, with no allowlist and no credential "
                "injection; set OPENMA_EGRESS=proxy (the default) outside development"
            )
        return platform

    def backend(self, store: str) -> StoreBackend:
        """The backend that holds ``store`` (``"agents"``, ``"sessions"``, ...)."""
        if self._closed:
            raise ConfigError("this platform is closed")
        return self._backends[self.settings.backend_for(store)]

    @property
    def backends(self) -> dict[str, StoreBackend]:
        return dict(self._backends)

    @property
    def blobs(self) -> BlobStore:
        """The whole blob store (admin level: every tenant's keys, under ``t/<tenant_id>/``).

        It is the store registered for the scheme of ``settings.blob_url`` (:data:`openma.registry.blob_stores`):
        the fsspec store for ``file://``, ``memory://``, ``s3://`` and every other fsspec URL by default.
        """
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
        """Deprecated alias of :meth:`sandbox_orchestrator` (an awaited method, not a property)."""
        warnings.warn(
            "Platform.sandboxes() is deprecated; use await Platform.sandbox_orchestrator()",
            DeprecationWarning,
            stacklevel=2,
        )
        return await self.sandbox_orchestrator()

    async def sandbox_orchestrator(self) -> SandboxOrchestrator:
        """The sandbox orchestrator (one sandbox per session), opened on first use from ``settings.sandbox``.

        Snapshots go to the platform's blob store under ``t/<tenant>/.openma/snapshots/<session>/``. On a
        platform opened with :meth:`open`, the orchestrator keeps its sandboxes alive and reaps the idle
        ones every ``sandbox_keepalive_interval`` seconds (:mod:`openma.core.upkeep`).
        """
        if self._closed:
            raise ConfigError("this platform is closed")
        async with self._orchestrator_lock:
            if self._orchestrator is None:
                from openma.core.orchestrator import SandboxOrchestrator

                factory = registry.sandboxes.load(self.settings.sandbox)
                provider = await factory(self.settings, blobs=self._blobs)
                self._orchestrator = SandboxOrchestrator(provider, self._blobs, self.telemetry)
                self._orchestrator.usage_recorder = self._record_sandbox_usage
                if self.settings.egress_mode == "proxy":  # every new sandbox gets its session's endpoint
                    from openma.core.egress.service import sandbox_endpoints

                    await self._start_egress()
                    self._orchestrator.egress = sandbox_endpoints(lambda: self._egress, provider.name)
                if self._task_group is not None and self.settings.sandbox_keepalive_interval > 0:
                    await self._orchestrator.start_upkeep(
                        self._task_group,
                        interval=self.settings.sandbox_keepalive_interval,
                        idle_reap_after=self.settings.sandbox_idle_reap_after,
                    )
            return self._orchestrator

    async def _record_sandbox_usage(self, tenant_id: str, slices: Sequence[UsageSlice]) -> int:
        """The orchestrator's metered sandbox time, written straight to the usage backend: its last periods
        are written while the platform closes (it refuses new calls by then; the backends are still open).
        The tenant id comes from a session this platform served, so it is not checked again."""
        return await self._backends[self.settings.backend_for("usage")].usage(TenantRef(tenant_id)).record(slices)

    @property
    def egress(self) -> EgressService | None:
        """The egress proxy of this platform's sandboxes (``None`` until the sandbox orchestrator started it in
        the task group of :meth:`open`, and with ``OPENMA_EGRESS=off``). See ``docs/egress.md``."""
        return self._egress

    async def _start_egress(self) -> None:
        from openma.adapters.egress import open_proxy
        from openma.core.egress.service import EgressService

        if self._egress is None and self._task_group is not None:
            service = EgressService.for_platform(self, open_proxy)
            await service.start(self._task_group)
            self._egress = service

    async def migrate(self) -> dict[str, list[str]]:
        """Apply pending migrations on every backend; return what each applied."""
        return {name: await backend.migrate() for name, backend in self._backends.items()}

    async def aclose(self) -> None:
        """Close every part (sandboxes, their provider, each backend, the blob store), whatever fails.

        Idempotent. If closing parts failed, raises an :class:`ExceptionGroup` of every failure once all parts
        had their turn (a :class:`BaseExceptionGroup` if one of them was a cancellation or an interrupt).
        """
        if self._closed:
            return
        self._closed = True
        parts: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self._egress is not None:
            parts.append(("egress proxy", self._egress.aclose))
        if self._orchestrator is not None:
            parts.append(("sandbox orchestrator", self._orchestrator.aclose))
            parts.append(("sandbox provider", self._orchestrator.provider.aclose))
        parts += [(f"model {provider}:{model_id}", m.aclose) for (provider, model_id), m in self._models.items()]
        if self.telemetry_dataset is not None:  # before the backends: it writes to one of them
            parts.append(("telemetry dataset", self.telemetry_dataset.aclose))
        parts += [(f"store backend {name!r}", backend.aclose) for name, backend in self._backends.items()]
        if self._blobs is not None:
            blobs = self._blobs
            parts.append(("blob store", lambda: _aclose(blobs)))
        errors: list[BaseException] = []
        for what, close in parts:
            try:
                await close()
            except BaseException as exc:  # close the others anyway
                exc.add_note(f"while closing the {what}")
                errors.append(exc)
        if errors:
            raise BaseExceptionGroup(f"{len(errors)} part(s) of the platform failed to close", errors)

    async def __aenter__(self) -> Platform:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


async def _aclose(store: object) -> None:
    """Close a blob store that has ``aclose`` (the port does not require one)."""
    close = getattr(store, "aclose", None)
    if close is not None:
        await close()
