"""How a store learns which tenant it serves.

Tenant-owned stores are *bound* to one tenant when they are built (``backend.agents(ref)``): no method takes
a tenant id, so no method can read across tenants. A :class:`TenantRef` carries the tenant id plus a check
that the tenant exists (and is not archived), which stores call before they create rows, so a typo in a
tenant id cannot create orphans in a store that lives in another database than the tenants.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs


async def _no_check() -> None:
    return None


@attrs.define(eq=False)
class TenantRef:
    """A tenant id and an async ``ensure()`` that raises ``NotFound``/``Conflict`` if it cannot own rows."""

    tenant_id: str
    _check: Callable[[], Awaitable[None]] = _no_check
    _ok: bool = attrs.field(default=False, init=False)

    async def ensure(self) -> None:
        """Check once that the tenant may own new rows; later calls are free."""
        if not self._ok:
            await self._check()
            self._ok = True

    def __repr__(self) -> str:
        return f"TenantRef({self.tenant_id!r})"
