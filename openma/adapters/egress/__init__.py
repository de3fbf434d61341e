"""The egress proxy adapter: :class:`EgressCA` (the per-platform CA) and :class:`EgressProxy` (the proxy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openma.adapters.egress.ca import EgressCA
from openma.adapters.egress.proxy import EgressProxy, proxy_credential

if TYPE_CHECKING:
    from openma.ports.egress import EgressResolver
    from openma.ports.telemetry import Telemetry


def open_proxy(
    resolver: EgressResolver,
    cert_pem: str,
    key_pem: str,
    upstream_ca: str | None,
    host: str,
    port: int,
    telemetry: Telemetry,
    /,
    *,
    passthrough: bool = False,
) -> EgressProxy:
    """The proxy a platform runs: its CA from PEM, its resolver, and where it listens (not started yet)."""
    ca = EgressCA.from_pem(cert_pem, key_pem)
    return EgressProxy(
        resolver, ca, telemetry=telemetry, upstream_ca=upstream_ca, host=host, port=port, passthrough=passthrough
    )


__all__ = ["EgressCA", "EgressProxy", "open_proxy", "proxy_credential"]
