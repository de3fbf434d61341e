"""Egress for the platform's sandboxes: the resolver the proxy asks, and the service that runs the proxy.

* :mod:`openma.core.egress.resolver`: :class:`EgressResolverImpl`, proxy credentials, grants and injection.
* :mod:`openma.core.egress.service`: :class:`EgressService`, the platform's CA and its supervised proxy, and
  the :class:`~openma.ports.egress.EgressEndpoint` each session's sandbox is given.
"""

from __future__ import annotations

from openma.core.egress.resolver import (
    PURPOSE,
    EgressRefreshFailed,
    EgressResolverImpl,
    EgressStores,
    Explanation,
    grant_of,
    host_matches,
)

__all__ = [
    "PURPOSE",
    "EgressRefreshFailed",
    "EgressResolverImpl",
    "EgressStores",
    "Explanation",
    "grant_of",
    "host_matches",
]
