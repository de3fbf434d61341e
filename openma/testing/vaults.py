"""Contracts for the vault and credential stores (``backend.vaults(ref)``, ``backend.credentials(ref, keys)``).

Use them like the other store contracts (:mod:`openma.testing.stores`): combine with a ``store_backend``
fixture that yields a fresh, migrated backend. The credential contract seals with its own
:class:`~openma.core.secrets.KeyRing` (:attr:`CredentialContract.root_secret`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import pytest

from openma.core.secrets import KeyRing
from openma.errors import Conflict, InvalidInput, NotFound, SecretUnreadable
from openma.ports.backend import StoreBackend
from openma.ports.vaults import CredentialStore, VaultStore
from openma.testing.stores import NASTY, _StoreContractBase

TOKEN = "ghp_contract_secret_value_0123456789abcd"


def bearer(token: str = TOKEN, host: str = "api.github.com") -> dict[str, Any]:
    return {"type": "static_bearer", "token": token, "hosts": [host]}


def oauth(url: str = "https://mcp.example.com/sse", refresh: str = "refresh-0-secret-value") -> dict[str, Any]:
    return {
        "type": "mcp_oauth",
        "mcp_server_url": url,
        "access_token": "access-0-secret-value-wxyz",
        "refresh_token": refresh,
        "client_secret": "client-secret-value-1234",
    }


class _VaultBase(_StoreContractBase):
    #: The root secret the contract's credential stores seal with.
    root_secret: ClassVar[str] = "contract-root-secret-0123456789"

    def stores(self, backend: StoreBackend, tenant_id: str) -> tuple[VaultStore, CredentialStore]:
        ref = self.ref(backend, tenant_id)
        return backend.vaults(ref), backend.credentials(ref, KeyRing(self.root_secret))

    async def vault(self, backend: StoreBackend) -> tuple[str, VaultStore, CredentialStore]:
        tenant = await backend.tenants.create(name="t")
        vaults, credentials = self.stores(backend, tenant.id)
        return (await vaults.create(name="v")).id, vaults, credentials


@pytest.mark.anyio
class VaultContract(_VaultBase):
    """Vaults: CRUD, unique active names, archive takes the credentials along, tenant isolation."""

    async def test_crud_and_names(self, store_backend: StoreBackend) -> None:
        a, b = await self.two_tenants(store_backend)
        vaults, _ = self.stores(store_backend, a.id)
        vault = await vaults.create(name=NASTY, description="d", metadata={"k": 1})
        assert (await vaults.get(vault.id)) == vault
        assert vault.tenant_id == a.id and vault.metadata == {"k": 1}
        with pytest.raises(Conflict):
            await vaults.create(name=NASTY)
        renamed = await vaults.update(vault.id, name="other", metadata={"j": 2})
        assert renamed.name == "other" and renamed.metadata == {"k": 1, "j": 2}
        assert [v.id for v in (await vaults.list(q="OTH")).items] == [vault.id]
        with pytest.raises(InvalidInput):
            await vaults.create(name="")
        with pytest.raises(InvalidInput):
            await vaults.get("agt_" + "0" * 26)
        other, _ = self.stores(store_backend, b.id)
        with pytest.raises(NotFound):
            await other.get(vault.id)
        assert (await other.list()).items == []
        await vaults.delete(vault.id)
        with pytest.raises(NotFound):
            await vaults.get(vault.id)

    async def test_archive_takes_credentials_along(self, store_backend: StoreBackend) -> None:
        tenant = await store_backend.tenants.create(name="t")
        vaults, credentials = self.stores(store_backend, tenant.id)
        vault = await vaults.create(name="v")
        cred = await credentials.create(vault_id=vault.id, display_name="c", auth=bearer())
        archived = await vaults.archive(vault.id)
        assert archived.archived_at is not None
        assert (await credentials.get(cred.id)).archived_at is not None
        with pytest.raises(Conflict):
            await credentials.create(vault_id=vault.id, display_name="late", auth=bearer())
        assert (await vaults.archive(vault.id)).archived_at == archived.archived_at  # idempotent

    async def test_delete_removes_credentials(self, store_backend: StoreBackend) -> None:
        tenant = await store_backend.tenants.create(name="t")
        vaults, credentials = self.stores(store_backend, tenant.id)
        vault = await vaults.create(name="v")
        cred = await credentials.create(vault_id=vault.id, display_name="c", auth=bearer())
        await vaults.delete(vault.id)
        with pytest.raises(NotFound):
            await credentials.get(cred.id)


@pytest.mark.anyio
class CredentialContract(_VaultBase):
    """Credentials: redaction, reveal, the limit of 20, ``mcp_server_url`` rules, compare-and-set writes."""

    async def test_redacted_and_revealed(self, store_backend: StoreBackend) -> None:
        vault_id, _, credentials = await self.vault(store_backend)
        cred = await credentials.create(vault_id=vault_id, display_name="gh bot", auth=bearer())
        assert cred.auth == {"type": "static_bearer", "hosts": ["api.github.com"], "token": None}
        assert cred.auth_preview == "…" + TOKEN[-4:]
        assert await credentials.get(cred.id) == cred
        assert TOKEN not in repr(cred) and TOKEN not in repr(await credentials.list(vault_id=vault_id))
        assert await credentials.reveal(cred.id) == bearer()
        assert [c.id for c in (await credentials.list(vault_id=vault_id)).items] == [cred.id]
        short = await credentials.create(vault_id=vault_id, display_name="s", auth=bearer("abc"))
        assert short.auth_preview == "…"

    @pytest.mark.parametrize(
        "auth",
        [
            None,
            {"type": "basic"},
            {"type": "static_bearer", "token": "x"},
            {"type": "static_bearer", "token": "x", "hosts": "a.com"},
            {"type": "static_bearer", "token": "", "hosts": ["a.com"]},
            {"type": "static_bearer", "token": "x\ud800", "hosts": ["a.com"]},
            {"type": "static_bearer", "token": "x", "hosts": ["a.com"], "extra": 1},
            {"type": "mcp_oauth", "mcp_server_url": "ftp://x", "access_token": "a"},
        ],
    )
    async def test_bad_auth_writes_nothing(self, store_backend: StoreBackend, auth: Any) -> None:
        vault_id, _, credentials = await self.vault(store_backend)
        with pytest.raises(InvalidInput) as caught:
            await credentials.create(vault_id=vault_id, display_name="c", auth=auth)
        assert "x\ud800" not in caught.value.message
        assert (await credentials.list()).items == []

    async def test_unknown_and_foreign_vaults(self, store_backend: StoreBackend) -> None:
        vault_id, _, credentials = await self.vault(store_backend)
        with pytest.raises(NotFound):
            await credentials.create(vault_id="vlt_" + "0" * 26, display_name="c", auth=bearer())
        other = await store_backend.tenants.create(name="other")
        _, foreign = self.stores(store_backend, other.id)
        with pytest.raises(NotFound):
            await foreign.create(vault_id=vault_id, display_name="c", auth=bearer())

    async def test_at_most_20_active_even_when_racing(self, store_backend: StoreBackend) -> None:
        vault_id, _, credentials = await self.vault(store_backend)
        first = [await credentials.create(vault_id=vault_id, display_name=f"c{i}", auth=bearer()) for i in range(15)]
        outcomes: list[str] = []

        async def one(i: int) -> None:
            try:
                await credentials.create(vault_id=vault_id, display_name=f"r{i}", auth=bearer())
                outcomes.append("ok")
            except Conflict:
                outcomes.append("full")

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i)
        assert outcomes.count("ok") == 5 and outcomes.count("full") == 5
        assert len((await credentials.list(vault_id=vault_id, limit=100)).items) == 20
        await credentials.archive(first[0].id)
        await credentials.create(vault_id=vault_id, display_name="after archive", auth=bearer())

    async def test_mcp_server_url_unique_and_immutable(self, store_backend: StoreBackend) -> None:
        vault_id, _, credentials = await self.vault(store_backend)
        outcomes: list[str] = []

        async def one() -> None:
            try:
                await credentials.create(vault_id=vault_id, display_name="m", auth=oauth())
                outcomes.append("ok")
            except Conflict:
                outcomes.append("taken")

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        assert sorted(outcomes) == ["ok", "taken", "taken", "taken"]
        cred = (await credentials.list(vault_id=vault_id)).items[0]
        with pytest.raises(InvalidInput):
            await credentials.update(cred.id, auth=oauth(url="https://elsewhere.example.com/"))
        with pytest.raises(InvalidInput):
            await credentials.update(cred.id, auth=bearer())
        updated = await credentials.update(
            cred.id, auth={"access_token": "access-1-secret-value-new!"}, display_name="n"
        )
        assert updated.display_name == "n" and updated.auth["mcp_server_url"] == oauth()["mcp_server_url"]
        assert (await credentials.reveal(cred.id))["access_token"] == "access-1-secret-value-new!"
        await credentials.archive(cred.id)
        await credentials.create(vault_id=vault_id, display_name="again", auth=oauth())

    async def test_refresh_is_compare_and_set(self, store_backend: StoreBackend) -> None:
        vault_id, _, credentials = await self.vault(store_backend)
        cred = await credentials.create(vault_id=vault_id, display_name="m", auth=oauth())
        outcomes: list[str] = []

        async def refresher(i: int) -> None:
            try:
                await credentials.refresh(
                    cred.id, expected="refresh-0-secret-value", access_token=f"access-{i}", refresh_token=f"refresh-{i}"
                )
                outcomes.append(f"won-{i}")
            except Conflict:
                outcomes.append("lost")

        async with anyio.create_task_group() as tg:
            for i in range(1, 5):
                tg.start_soon(refresher, i)
        won = [o for o in outcomes if o.startswith("won")]
        assert len(won) == 1 and outcomes.count("lost") == 3
        winner = won[0].split("-")[1]
        stored = await credentials.reveal(cred.id)
        assert stored["refresh_token"] == f"refresh-{winner}" and stored["access_token"] == f"access-{winner}"
        plain = await credentials.create(vault_id=vault_id, display_name="b", auth=bearer())
        with pytest.raises(InvalidInput):
            await credentials.refresh(plain.id, expected="x", access_token="y")

    async def test_another_root_secret_cannot_read(self, store_backend: StoreBackend) -> None:
        vault_id, _, credentials = await self.vault(store_backend)
        cred = await credentials.create(vault_id=vault_id, display_name="c", auth=bearer())
        stranger = store_backend.credentials(
            self.ref(store_backend, credentials.tenant_id), KeyRing("another-root-secret-9876543210")
        )
        with pytest.raises(SecretUnreadable) as caught:
            await stranger.reveal(cred.id)
        assert caught.value.key_id in caught.value.message and TOKEN not in str(caught.value)
        rotated = store_backend.credentials(
            self.ref(store_backend, credentials.tenant_id),
            KeyRing("another-root-secret-9876543210", [self.root_secret]),
        )
        assert (await rotated.reveal(cred.id))["token"] == TOKEN
