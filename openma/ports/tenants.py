"""The tenants store: the only store that is not itself tenant-scoped (it is the admin's view)."""

from __future__ import annotations

from typing import Any, Protocol

from openma.models import Order, Page, Tenant


class TenantStore(Protocol):
    """Create, read and archive tenants.

    * ``create`` mints a ``tnt_`` id; ``name`` is 1-200 characters.
    * ``get`` raises ``NotFound`` for an unknown id and ``InvalidInput`` for a malformed one.
    * ``list`` is keyset-paginated on ``(created_at, id)``; archived tenants are left out unless asked for.
    * ``archive`` is idempotent and keeps the first archival time.
    """

    async def create(self, *, name: str, metadata: dict[str, Any] | None = None) -> Tenant: ...

    async def get(self, tenant_id: str) -> Tenant: ...

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        include_archived: bool = False,
    ) -> Page[Tenant]: ...

    async def archive(self, tenant_id: str) -> Tenant: ...
