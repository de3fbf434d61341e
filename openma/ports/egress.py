"""The egress ports: what the egress proxy asks of the platform, and what a sandbox is told about the proxy.

Every sandbox's outbound HTTP(S) goes through openma's egress proxy (DESIGN section 3, "Egress"). The proxy
knows nothing of stores: for each request it asks an :class:`EgressResolver`

* ``grant(proxy_credential)`` — which session sent it. ``None`` for an unknown, foreign or revoked
  credential; an exception for a lookup that failed. The proxy refuses the request in both cases (fail
  closed).
* ``inject(grant, host, port)`` — the headers to add to a request to ``host:port``: the matching credentials
  of the session's vaults (``static_bearer`` by ``hosts``, ``mcp_oauth`` by ``mcp_server_url``'s host,
  refreshed when near expiry). An exception refuses the request. The proxy removes whatever
  ``Authorization`` / ``Proxy-Authorization`` the sandbox sent before adding these.

A sandbox receives an :class:`EgressEndpoint` in its :class:`~openma.ports.sandbox.SandboxSpec`: where the
proxy listens, the session's proxy credential and the CA certificate to trust. It never receives a vault
secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

import attrs

Networking = Literal["limited", "unrestricted"]


@attrs.frozen
class EgressGrant:
    """One session's egress policy, as the proxy enforces it.

    ``allowed_hosts`` entries are ``host``, ``*.domain`` (any subdomain, not the domain itself) or either with
    ``:port``. Under ``limited`` only they are reachable; under ``unrestricted`` any public destination is.
    Loopback, private, link-local and metadata destinations are reachable only when an entry names the host
    exactly (never under ``unrestricted`` alone, never through a wildcard).
    """

    tenant_id: str
    session_id: str
    networking: Networking = "limited"
    allowed_hosts: tuple[str, ...] = ()


class EgressResolver(Protocol):
    async def grant(self, proxy_credential: str) -> EgressGrant | None:
        """The session a proxy credential belongs to; ``None`` when it is unknown (the proxy refuses)."""
        ...

    async def inject(self, grant: EgressGrant, host: str, port: int) -> Mapping[str, str]:
        """Headers to inject into a request to ``host:port`` for this session (empty when none match)."""
        ...


@attrs.frozen(repr=False)
class EgressEndpoint:
    """Where a sandbox's proxy is, as the sandbox must be configured.

    ``host``/``port`` is the proxy's address as seen from the sandbox's host side (a loopback address for
    local sandboxes, a reachable one for remote providers); ``credential`` is the session's proxy credential
    (``Proxy-Authorization: Basic`` with user ``openma``, or in the proxy URL); ``ca_pem`` is the
    platform's CA certificate (PEM) that the sandbox must trust; ``no_proxy`` lists hosts that bypass it.
    """

    host: str
    port: int
    credential: str
    ca_pem: str
    no_proxy: tuple[str, ...] = ()

    def url(self, host: str | None = None, port: int | None = None) -> str:
        """The proxy URL with the credential, optionally for another address (a forwarder's)."""
        return f"http://openma:{self.credential}@{host or self.host}:{port or self.port}"

    def env(self, *, ca_file: str, host: str | None = None, port: int | None = None) -> dict[str, str]:
        """The variables a process needs to use the proxy and trust its CA (stored at ``ca_file``)."""
        url = self.url(host, port)
        no_proxy = ",".join(self.no_proxy)
        return {
            "HTTPS_PROXY": url,
            "HTTP_PROXY": url,
            "https_proxy": url,
            "http_proxy": url,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "SSL_CERT_FILE": ca_file,
            "REQUESTS_CA_BUNDLE": ca_file,
            "CURL_CA_BUNDLE": ca_file,
            "NODE_EXTRA_CA_CERTS": ca_file,
        }

    def __repr__(self) -> str:  # the credential stays out of reprs and logs
        return f"EgressEndpoint(host={self.host!r}, port={self.port}, credential=<redacted>)"


__all__: list[str] = ["EgressEndpoint", "EgressGrant", "EgressResolver", "Networking"]
