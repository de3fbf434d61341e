"""The platform's :class:`~openma.ports.egress.EgressResolver`: proxy credentials, grants and injection.

**Proxy credentials** are stateless: ``<tenant_id>.<session_id>.<mac>``, where ``mac`` is HMAC-SHA256 of the
tenant and session ids under a key derived from the key ring with HKDF (purpose ``egress``), base64url.
Nothing is stored; the credential is valid while the session exists and is not terminated or archived, and
under any key of the ring (a rotation keeps credentials of running sandboxes valid until the previous secret
is dropped). The MAC is compared in constant time. A malformed or forged credential, a session that is gone,
terminated or archived: ``grant`` returns ``None`` (the proxy refuses). A lookup that fails raises (the proxy
refuses too). The tenant comes from the signed credential, so a request can never reach another tenant.

**Grants** come from the environment snapshot frozen into the session: ``config["networking"]`` is
``{"type": "limited", "allowed_hosts": [...]}`` or ``{"type": "unrestricted"}``. A session whose environment
has no ``networking`` block (or a malformed one) gets ``limited`` with no hosts: nothing is reachable until
the environment names its hosts (fail closed).

**Injection** reads the session's vaults' active credentials for each request and returns the headers of
those matching the host: ``static_bearer`` by ``hosts`` (exact, or ``*.domain`` for any subdomain), with
``header`` as a template (default ``Authorization: Bearer {token}``); ``mcp_oauth`` by the host of
``mcp_server_url``, as ``Authorization: Bearer {access_token}``. An ``mcp_oauth`` credential whose
``expires_at`` is within :attr:`EgressResolverImpl.refresh_margin` seconds is refreshed first at its
``token_endpoint`` (``grant_type=refresh_token``) and written back with the store's compare-and-set
``refresh``: concurrent refreshes in one process share one call (a lock per credential), and across
processes the loser of the write reads the winner's tokens. Nothing secret is cached: each request reads
the credentials it needs and forgets them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import anyio
import attrs

from openma.core.egress_policy import decide, normalize_host, parse_rule
from openma.core.ids import check_id
from openma.errors import Conflict, InvalidInput, NotFound, OpenmaError
from openma.models import Session
from openma.ports.egress import EgressGrant, Networking
from openma.ports.vaults import CredentialStore

PURPOSE: Final = "egress"
#: Seconds before ``expires_at`` at which an ``mcp_oauth`` access token is refreshed.
REFRESH_MARGIN: Final = 60.0
_MAX_CREDENTIAL: Final = 256


class EgressRefreshFailed(OpenmaError):
    """An ``mcp_oauth`` credential near expiry could not be refreshed at its token endpoint."""

    code = "egress_refresh_failed"


@attrs.frozen
class Explanation:
    """What :meth:`EgressResolverImpl.explain` found: the grant, the destination and its addresses, the
    decision and the names of the headers that would be injected (no value)."""

    grant: EgressGrant
    host: str
    port: int
    addresses: tuple[str, ...]
    allowed: bool
    reason: str
    injected: tuple[str, ...]


class _SessionReader(Protocol):
    async def get(self, session_id: str) -> Session: ...


class EgressStores(Protocol):
    """What the resolver reads of one tenant (a :class:`~openma.platform.TenantScope` is one)."""

    @property
    def sessions(self) -> _SessionReader: ...

    @property
    def credentials(self) -> CredentialStore: ...


#: ``post(url, form)`` → the JSON body of a successful token-endpoint response (raises otherwise).
TokenPost = Callable[[str, Mapping[str, str]], Awaitable[Mapping[str, Any]]]


class _MacKeys(Protocol):
    def mac_keys(self, purpose: str) -> list[bytes]: ...


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def grant_of(session: Session) -> EgressGrant:
    """The egress policy of ``session`` from its environment snapshot (``limited`` and empty by default)."""
    config = session.environment.get("config") if isinstance(session.environment, dict) else None
    block = config.get("networking") if isinstance(config, dict) else None
    networking: Networking = "limited"
    hosts: tuple[str, ...] = ()
    if isinstance(block, dict):
        if block.get("type") == "unrestricted":
            networking = "unrestricted"
        listed = block.get("allowed_hosts")
        if isinstance(listed, list):
            hosts = tuple(h.strip().lower() for h in listed if isinstance(h, str) and h.strip())
    return EgressGrant(tenant_id=session.tenant_id, session_id=session.id, networking=networking, allowed_hosts=hosts)


def host_matches(pattern: str, host: str, port: int = 443) -> bool:
    """``pattern`` (``host``, ``*.domain``, either with ``:port``) names ``host:port``, by the rules of
    :mod:`openma.core.egress_policy` (case, trailing dot, IDNA); a malformed pattern or host matches nothing."""
    try:
        return parse_rule(pattern).matches(normalize_host(host), port)
    except InvalidInput:
        return False


def _header(template: str, value: str) -> tuple[str, str] | None:
    """``"Name: text {token}"`` → ``("Name", "text <value>")``; ``None`` for a template without a name."""
    name, sep, text = template.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in value or "\r" in value:
        return None
    return name, text.strip().replace("{token}", value)


async def _httpx_post(url: str, form: Mapping[str, str]) -> Mapping[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=15.0) as client:
        response = await client.post(url, data=dict(form), headers={"Accept": "application/json"})
        response.raise_for_status()
        body = response.json()
    if not isinstance(body, dict):
        raise EgressRefreshFailed("the token endpoint did not answer with a JSON object")
    return body


class EgressResolverImpl:
    """The platform's egress resolver (see the module docstring for the contract).

    ``stores(tenant_id)`` gives the tenant's sessions and credentials; ``keys`` the key ring (its
    ``mac_keys("egress")``); ``post`` the token-endpoint call (httpx by default); ``clock`` Unix seconds.
    """

    def __init__(
        self,
        stores: Callable[[str], EgressStores],
        keys: _MacKeys,
        *,
        post: TokenPost | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = REFRESH_MARGIN,
    ) -> None:
        self._stores = stores
        self._keys = keys
        self._post = post or _httpx_post
        self._clock = clock
        self.refresh_margin = refresh_margin
        self._locks: dict[tuple[str, str], anyio.Lock] = {}

    def __repr__(self) -> str:
        return "EgressResolverImpl()"

    # -- proxy credentials

    @staticmethod
    def _message(tenant_id: str, session_id: str) -> bytes:
        return f"openma-egress\x1f{tenant_id}\x1f{session_id}".encode()

    def credential(self, tenant_id: str, session_id: str) -> str:
        """The proxy credential of a session (the same every time; valid while the session is)."""
        check_id(tenant_id, "tnt", what="tenant_id")
        check_id(session_id, "ses", what="session_id")
        key = self._keys.mac_keys(PURPOSE)[0]
        mac = hmac.new(key, self._message(tenant_id, session_id), hashlib.sha256).digest()
        return f"{tenant_id}.{session_id}.{_b64(mac)}"

    def verify(self, credential: object) -> tuple[str, str] | None:
        """``(tenant_id, session_id)`` of a well-formed, authentic credential; ``None`` otherwise."""
        if not isinstance(credential, str) or len(credential) > _MAX_CREDENTIAL:
            return None
        parts = credential.split(".")
        if len(parts) != 3:
            return None
        tenant_id, session_id, mac = parts
        try:
            check_id(tenant_id, "tnt")
            check_id(session_id, "ses")
        except InvalidInput:
            return None
        given = mac.encode("ascii", "replace")
        ok = False
        for key in self._keys.mac_keys(PURPOSE):
            expected = _b64(hmac.new(key, self._message(tenant_id, session_id), hashlib.sha256).digest())
            ok |= hmac.compare_digest(expected.encode("ascii"), given)
        return (tenant_id, session_id) if ok else None

    async def _session(self, tenant_id: str, session_id: str) -> Session | None:
        try:
            session = await self._stores(tenant_id).sessions.get(session_id)
        except NotFound:
            return None
        if session.tenant_id != tenant_id or session.status == "terminated" or session.archived_at is not None:
            return None
        return session

    # -- the EgressResolver port

    async def grant(self, proxy_credential: str) -> EgressGrant | None:
        """The session's grant; ``None`` for a bad credential or a session gone, terminated or archived."""
        who = self.verify(proxy_credential)
        if who is None:
            return None
        session = await self._session(*who)
        return None if session is None else grant_of(session)

    async def inject(self, grant: EgressGrant, host: str, port: int) -> Mapping[str, str]:
        """The headers of the session's vault credentials matching ``host`` (empty when none match)."""
        session = await self._session(grant.tenant_id, grant.session_id)
        if session is None or not session.vault_ids:
            return {}
        credentials = self._stores(grant.tenant_id).credentials
        headers: dict[str, str] = {}
        for vault_id in session.vault_ids:
            try:
                page = await credentials.list(vault_id=vault_id, limit=50)
            except NotFound:  # a vault deleted since the session was created gives nothing
                continue
            for credential in page.items:
                auth = credential.auth
                kind = auth.get("type")
                if kind == "static_bearer":
                    if not any(host_matches(h, host, port) for h in auth.get("hosts") or ()):
                        continue
                    secret = await credentials.reveal(credential.id)
                    made = _header(auth.get("header") or "Authorization: Bearer {token}", secret["token"])
                elif kind == "mcp_oauth":
                    target = urlsplit(str(auth.get("mcp_server_url") or ""))
                    if not target.hostname or not host_matches(target.hostname, host, port):
                        continue
                    token = await self._access_token(credentials, credential.id)
                    made = _header("Authorization: Bearer {token}", token)
                else:
                    continue
                if made is not None and made[0].lower() not in {k.lower() for k in headers}:
                    headers[made[0]] = made[1]
        return headers

    async def explain(
        self, tenant_id: str, session_id: str, host: str, port: int, *, resolve: bool = True
    ) -> Explanation:
        """What the proxy would do for ``host:port`` from this session: the policy's decision (on the
        addresses ``host`` resolves to now) and the NAMES of the headers it would inject, never their values.
        ``NotFound`` when the session is gone, terminated or archived."""
        session = await self._session(tenant_id, session_id)
        if session is None:
            raise NotFound(f"no live session {session_id} in tenant {tenant_id}", session_id=session_id)
        grant = grant_of(session)
        addresses: list[str] = []
        listed = any(host_matches(h, host, port) for h in grant.allowed_hosts)
        if resolve and (listed or grant.networking == "unrestricted"):  # else refused whatever it resolves to
            try:
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = sorted({str(info[4][0]) for info in infos})
            except OSError:
                addresses = []
        decision = decide(grant, host, port, addresses)
        names = sorted(await self.inject(grant, host, port)) if decision.allowed else []
        return Explanation(grant, host, port, tuple(addresses), decision.allowed, decision.reason, tuple(names))

    # -- mcp_oauth refresh

    def _due(self, secret: Mapping[str, Any]) -> bool:
        expires_at = secret.get("expires_at")
        return (
            isinstance(expires_at, int)
            and bool(secret.get("refresh_token"))
            and bool(secret.get("token_endpoint"))
            and expires_at - self._clock() <= self.refresh_margin
        )

    async def _access_token(self, credentials: CredentialStore, credential_id: str) -> str:
        secret = await credentials.reveal(credential_id)
        if not self._due(secret):
            return str(secret["access_token"])
        lock = self._locks.setdefault((credentials.tenant_id, credential_id), anyio.Lock())
        async with lock:
            secret = await credentials.reveal(credential_id)  # another task may have refreshed it meanwhile
            if not self._due(secret):
                return str(secret["access_token"])
            spent = str(secret["refresh_token"])
            form = {"grant_type": "refresh_token", "refresh_token": spent}
            for field in ("client_id", "client_secret"):
                if secret.get(field):
                    form[field] = str(secret[field])
            try:
                body = await self._post(str(secret["token_endpoint"]), form)
            except OpenmaError:
                raise
            except Exception as exc:  # the endpoint's error text may echo the form: keep only its type
                raise EgressRefreshFailed(
                    f"refreshing credential {credential_id} failed ({type(exc).__name__})",
                    credential_id=credential_id,
                ) from None
            access = body.get("access_token")
            if not isinstance(access, str) or not access:
                raise EgressRefreshFailed(
                    f"the token endpoint of credential {credential_id} returned no access_token",
                    credential_id=credential_id,
                )
            refresh = body.get("refresh_token")
            expires_in = body.get("expires_in")
            expires_at = int(self._clock() + expires_in) if isinstance(expires_in, int | float) else None
            try:
                await credentials.refresh(
                    credential_id,
                    expected=spent,
                    access_token=access,
                    refresh_token=refresh if isinstance(refresh, str) and refresh else None,
                    expires_at=expires_at,
                )
            except Conflict:  # another process refreshed first: its tokens are the stored ones
                return str((await credentials.reveal(credential_id))["access_token"])
            return access


__all__ = [
    "PURPOSE",
    "EgressRefreshFailed",
    "EgressResolverImpl",
    "EgressStores",
    "Explanation",
    "grant_of",
    "host_matches",
]
