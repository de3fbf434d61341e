"""The vault and credential stores, bound to one tenant.

A vault is a named group of credentials; a session given ``vault_ids=`` may use them. Secret fields of a
credential's ``auth`` are stored only encrypted and never come back from ``get``/``list`` (they are
``None`` there, with ``auth_preview``); :meth:`CredentialStore.reveal` is the one way to read them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from openma.models import Credential, Order, Page, Vault


class VaultStore(Protocol):
    """Vaults: ``archive`` archives the vault's credentials in the same write unit, ``delete`` removes them."""

    tenant_id: str

    async def create(self, *, name: str, description: str = "", metadata: dict[str, Any] | None = None) -> Vault: ...

    async def get(self, vault_id: str) -> Vault: ...

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        include_archived: bool = False,
        q: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[Vault]: ...

    async def update(self, vault_id: str, **changes: Any) -> Vault: ...

    async def archive(self, vault_id: str) -> Vault: ...

    async def delete(self, vault_id: str) -> None: ...


class CredentialStore(Protocol):
    """Credentials of the tenant's vaults.

    At most 20 active credentials per vault; an ``mcp_oauth`` credential's ``mcp_server_url`` is immutable
    and unique among its vault's active credentials (``Conflict``). ``refresh`` is the OAuth write-back:
    it writes only if the stored refresh token is still ``expected`` (a compare-and-set).
    """

    tenant_id: str

    async def create(
        self, *, vault_id: str, display_name: str, auth: dict[str, Any], metadata: dict[str, Any] | None = None
    ) -> Credential: ...

    async def get(self, credential_id: str) -> Credential: ...

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        include_archived: bool = False,
        q: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        vault_id: str | None = None,
    ) -> Page[Credential]: ...

    async def update(self, credential_id: str, **changes: Any) -> Credential: ...

    async def reveal(self, credential_id: str) -> dict[str, Any]: ...

    async def refresh(
        self,
        credential_id: str,
        *,
        expected: str,
        access_token: str,
        refresh_token: str | None = None,
        expires_at: int | None = None,
    ) -> Credential: ...

    async def archive(self, credential_id: str) -> Credential: ...

    async def delete(self, credential_id: str) -> None: ...
