"""The egress proxy adapter: :class:`EgressCA` (the per-platform CA) and :class:`EgressProxy` (the proxy)."""

from __future__ import annotations

from openma.adapters.egress.ca import EgressCA
from openma.adapters.egress.proxy import EgressProxy, proxy_credential

__all__ = ["EgressCA", "EgressProxy", "proxy_credential"]
