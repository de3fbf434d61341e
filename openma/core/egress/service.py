"""The platform's egress proxy: its CA, the proxy task (restarted if it dies), and each sandbox's endpoint.

**The CA** is derived, not stored: its P-256 private key is HKDF of the current root secret (purpose
``egress-ca``), its certificate is built from fixed fields and signed deterministically. Every start, and
every host sharing the root secret, therefore has the same CA, so a sandbox keeps trusting the proxy across
restarts and when another host's platform takes its session over, and nothing secret is written anywhere.
Rotating the root secret makes a new CA; sandboxes get the new certificate at their next warm-up.

**The proxy** runs in the platform's task group: :meth:`EgressService.start` returns once it listens. If it
stops or fails later, it is started again on the same port (an ``egress.proxy_restart`` telemetry event
says why), so the endpoints given to sandboxes stay valid; :meth:`aclose` stops it.

**Endpoints**: :meth:`EgressService.endpoint` gives a session's sandbox the proxy's address (the listen
address for local sandboxes, the advertised one for remote providers), the session's proxy credential and
the CA certificate.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openma.config.egress import EgressConfig
from openma.core.egress.ca_cert import ca_certificate_builder
from openma.core.egress.resolver import EgressResolverImpl, EgressStores
from openma.core.secrets import KeyRing
from openma.errors import ConfigError
from openma.ports.egress import EgressEndpoint, EgressResolver
from openma.ports.telemetry import Telemetry

if TYPE_CHECKING:
    from openma.settings import Settings

CA_PURPOSE: Final = "egress-ca"
#: Providers whose sandboxes run on this host and reach the proxy at its listen address.
LOCAL_PROVIDERS: Final = frozenset({"local", "bubblewrap"})
_NOT_BEFORE: Final = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER: Final = datetime.datetime(2045, 1, 1, tzinfo=datetime.UTC)
#: ``NO_PROXY`` of a remote sandbox: its own loopback (its own servers). A local sandbox's loopback is the
#: host's, so nothing bypasses the proxy there.
NO_PROXY: Final = ("localhost", "127.0.0.1", "::1")


class _MacKeys(Protocol):
    key_id: str

    def mac_keys(self, purpose: str) -> list[bytes]: ...


class _Platform(Protocol):
    """What :meth:`EgressService.for_platform` reads of a :class:`~openma.platform.Platform`."""

    @property
    def settings(self) -> Settings: ...

    @property
    def keys(self) -> KeyRing: ...

    telemetry: Telemetry

    def tenant(self, tenant: str) -> EgressStores: ...


class ProxyHandle(Protocol):
    """A started-or-startable proxy: ``serve`` reports its ``port`` through ``task_status`` and runs until stopped."""

    port: int

    async def serve(self, *, task_status: TaskStatus[Any] = ...) -> None: ...


class ProxyFactory(Protocol):
    """``factory(resolver, ca_cert_pem, ca_key_pem, upstream_ca_path, host, port, telemetry)`` → a proxy.

    ``passthrough=True`` is passed only when ``OPENMA_EGRESS_PASSTHROUGH`` is on, so a factory without that
    keyword works as long as the setting is off."""

    def __call__(
        self,
        resolver: EgressResolver,
        cert_pem: str,
        key_pem: str,
        upstream_ca: str | None,
        host: str,
        port: int,
        telemetry: Telemetry,
        /,
        *,
        passthrough: bool = ...,
    ) -> ProxyHandle: ...


def derive_ca(keys: _MacKeys) -> tuple[str, str]:
    """``(cert_pem, key_pem)`` of the platform's egress CA, derived from the key ring's current root secret."""
    seed = int.from_bytes(keys.mac_keys(CA_PURPOSE)[0], "big")
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # of P-256
    key = ec.derive_private_key(seed % (order - 1) + 1, ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openma"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"openma egress CA {keys.key_id}"),
        ]
    )
    public = key.public_key()
    serial = int.from_bytes(hashes_of(public), "big") >> 1 or 1
    builder = ca_certificate_builder(name, public, serial, _NOT_BEFORE, _NOT_AFTER)
    try:
        cert = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    except TypeError:  # cryptography < 44 signs with a random nonce: same key and name, other bytes
        cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem


def hashes_of(public: ec.EllipticCurvePublicKey) -> bytes:
    """The first 16 bytes of SHA-256 of the public key (the CA certificate's serial number)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return digest.finalize()[:16]


def _leaf(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class EgressService:
    """The platform's egress proxy and the endpoints of its sandboxes (see the module docstring)."""

    def __init__(
        self,
        config: EgressConfig,
        resolver: EgressResolverImpl,
        keys: _MacKeys,
        factory: ProxyFactory,
        telemetry: Telemetry,
        *,
        restart_delay: float = 0.2,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.ca_pem, self._ca_key = derive_ca(keys)
        self._factory = factory
        self._telemetry = telemetry
        self._restart_delay = restart_delay
        self._port: int | None = None
        self._scope: anyio.CancelScope | None = None
        self._proxy: ProxyHandle | None = None
        self._current: anyio.CancelScope | None = None
        self._listening = anyio.Event()
        #: How many times the proxy was started again after it stopped or failed.
        self.restarts = 0

    @classmethod
    def for_platform(cls, platform: _Platform, factory: ProxyFactory) -> EgressService:
        """The service of ``platform``: its egress settings, a resolver over its tenants, its key ring."""
        resolver = EgressResolverImpl(platform.tenant, platform.keys)
        return cls(platform.settings.egress, resolver, platform.keys, factory, platform.telemetry)

    def __repr__(self) -> str:
        return f"EgressService({self.config.listen_host}:{self._port}, restarts={self.restarts})"

    @property
    def port(self) -> int | None:
        """The port the proxy listens on (``None`` before :meth:`start`)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._scope is not None and not self._scope.cancel_called

    async def start(self, task_group: TaskGroup) -> None:
        """Start the proxy in ``task_group``; returns once it listens (its first start's error is raised)."""
        if self._scope is not None:
            return
        await task_group.start(self._supervise)

    async def _supervise(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            started = False
            while True:
                port = self._port if self._port is not None else self.config.listen_port
                proxy = self._factory(
                    self.resolver,
                    self.ca_pem,
                    self._ca_key,
                    self.config.upstream_ca,
                    self.config.listen_host,
                    port,
                    self._telemetry,
                    **({"passthrough": True} if self.config.passthrough else {}),
                )
                reason = "stopped"
                try:
                    with anyio.CancelScope() as self._current:
                        async with anyio.create_task_group() as tg:
                            await tg.start(proxy.serve)
                            self._proxy, self._port = proxy, proxy.port
                            self._listening.set()
                            if not started:
                                started = True
                                task_status.started()
                    if self._current.cancel_called:
                        reason = "restart"
                except Exception as exc:
                    leaf = _leaf(exc)
                    if not started:
                        raise ConfigError(
                            f"the egress proxy cannot listen on {self.config.listen_host}:{port}: "
                            f"{type(leaf).__name__}: {leaf}; set OPENMA_EGRESS_LISTEN_HOST/PORT or OPENMA_EGRESS=off",
                            field="egress_listen_port",
                        ) from exc
                    reason = type(leaf).__name__
                finally:
                    self._proxy = None
                    if self._listening.is_set():  # (restart() already put an unset one in place)
                        self._listening = anyio.Event()
                self.restarts += 1
                self._telemetry.emit("egress.proxy_restart", reason=reason, port=self._port, restarts=self.restarts)
                await anyio.sleep(self._restart_delay)  # a listener dying in a loop does not spin

    async def restart(self) -> None:
        """Drop every connection of the proxy and start it again on the same port (what happens by itself
        when it dies; also a way to re-read ``OPENMA_EGRESS_UPSTREAM_CA``). Requests in flight fail; returns
        once the new proxy listens."""
        if self._current is None or not self.running:
            return
        self._listening = anyio.Event()
        self._current.cancel()
        await self._listening.wait()

    async def listening(self) -> None:
        """Wait until the proxy listens (at once when it does)."""
        await self._listening.wait()

    async def aclose(self) -> None:
        """Stop the proxy (idempotent)."""
        if self._scope is not None:
            self._scope.cancel()

    def endpoint(self, tenant_id: str, session_id: str, *, provider: str = "local") -> EgressEndpoint:
        """What the sandbox of a session is told: the proxy's address, its credential and the CA."""
        if self._port is None or not self.running:
            raise ConfigError(
                "the egress proxy is not running: sandboxes need a platform opened with Platform.open "
                "(the proxy runs in its task group), or OPENMA_EGRESS=off",
                field="egress_mode",
            )
        host, port = self.config.listen_host, self._port
        no_proxy: tuple[str, ...] = ()
        if provider not in LOCAL_PROVIDERS:
            host = self.config.advertise_host or host
            port = self.config.advertise_port or port
            no_proxy = NO_PROXY
        return EgressEndpoint(
            host=host,
            port=port,
            credential=self.resolver.credential(tenant_id, session_id),
            ca_pem=self.ca_pem,
            no_proxy=no_proxy,
        )


def sandbox_endpoints(
    service: Callable[[], EgressService | None], provider: str
) -> Callable[[str, str], EgressEndpoint]:
    """What gives each new sandbox of ``provider`` its session's endpoint (the orchestrator's ``egress``).
    Without a running service (a platform opened with ``connect``, which has no task group) it refuses:
    a sandbox never gets an open network by accident."""

    def endpoint(tenant_id: str, session_id: str) -> EgressEndpoint:
        running = service()
        if running is None:
            raise ConfigError(
                "sandboxes go through the egress proxy, which runs in the task group of Platform.open; "
                "open the platform with Platform.open (or set OPENMA_EGRESS=off)",
                field="egress_mode",
            )
        return running.endpoint(tenant_id, session_id, provider=provider)

    return endpoint


__all__ = [
    "CA_PURPOSE",
    "LOCAL_PROVIDERS",
    "NO_PROXY",
    "EgressService",
    "ProxyFactory",
    "ProxyHandle",
    "derive_ca",
    "sandbox_endpoints",
]
