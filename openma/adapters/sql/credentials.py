"""Credentials on the SQL family: a vault's secrets, stored only sealed (see :mod:`openma.core.secrets`).

A row keeps the public part of its ``auth`` in clear (type, hosts, ``mcp_server_url``, ...), a preview of
the token, and the whole ``auth`` sealed in ``auth_sealed``, bound to its tenant, table, row and field.
The rules, each checked inside the write unit that would break it:

* at most :data:`MAX_ACTIVE_PER_VAULT` active credentials per vault: the insert first locks the vault row
  (an ``UPDATE`` that changes nothing, which also refuses an archived or missing vault), then inserts only
  while fewer are active, so two racing creates cannot both pass a count;
* an ``mcp_oauth`` credential's ``mcp_server_url`` is immutable and unique among the vault's active
  credentials (a partial unique index; a racing duplicate is ``Conflict``);
* every change of ``auth`` (``update``, ``refresh``) is a compare-and-set on the stored ciphertext, so two
  writers never overwrite each other's token.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

from openma.adapters.sql.entity import Filter, TenantBoundStore
from openma.core import validate
from openma.core.clock import Clock, ms_to_datetime
from openma.core.credentials import check_auth, preview, public_part
from openma.core.ids import check_id
from openma.core.jsonutil import dumps, loads
from openma.errors import Conflict, InvalidInput, NotFound
from openma.models import Credential, Place
from openma.ports.sealing import Sealer
from openma.ports.sql import Row, SqlClient, Statement
from openma.ports.tenancy import TenantRef

MAX_ACTIVE_PER_VAULT: Final = 20
#: The HKDF purpose of the credential key.
PURPOSE: Final = "credentials"
_CAS_RETRIES: Final = 5


def _vault_id(value: Any) -> str:
    return check_id(value, "vlt", what="vault_id")


class SqlCredentialStore(TenantBoundStore[Credential]):
    """Credentials of one tenant's vaults; ``get``/``list`` redact, ``reveal`` decrypts."""

    table = "credentials"
    prefix = "crd"
    noun = "credential"
    fields = {"display_name": lambda v: validate.name(v, "display_name")}
    filters = {"vault_id": Filter("vault_id", _vault_id)}

    def __init__(self, client: SqlClient, tenant: TenantRef, keys: Sealer, clock: Clock | None = None) -> None:
        super().__init__(client, tenant, clock)
        self._keys = keys

    def from_row(self, row: Row) -> Credential:
        common = self._common(row)
        common["display_name"] = common.pop("name")
        return Credential(
            **common,
            vault_id=row["vault_id"],
            auth=loads(row["auth_public"]),
            auth_preview=row["auth_preview"],
            metadata=loads(row["metadata"]),
        )

    def _place(self, credential_id: str) -> Place:
        return Place(self.tenant_id, self.table, credential_id, "auth")

    def _column_values(self, field: str, value: Any) -> dict[str, Any]:
        if field == "display_name":
            return {"name": value, "name_search": validate.search_key(value)}
        return super()._column_values(field, value)

    def _sealed_columns(self, credential_id: str, auth: dict[str, Any]) -> dict[str, Any]:
        sealed = self._keys.seal(dumps(auth).encode("utf-8"), PURPOSE, self._place(credential_id))
        return {"auth_public": dumps(public_part(auth)), "auth_preview": preview(auth), "auth_sealed": sealed}

    async def create(
        self,
        *,
        vault_id: str,
        display_name: str,
        auth: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> Credential:
        """Add a credential to an active vault (``NotFound`` for an unknown vault, ``Conflict`` for an archived
        one, a full vault, or an ``mcp_server_url`` another active credential of the vault has)."""
        vault_id = _vault_id(vault_id)
        name = validate.name(display_name, "display_name")
        checked = check_auth(auth)
        meta = validate.metadata(metadata)
        credential_id, now = await self._mint()
        values = {
            "name": name,
            "vault_id": vault_id,
            "auth_type": checked["type"],
            **self._sealed_columns(credential_id, checked),
            "mcp_server_url": checked.get("mcp_server_url"),
            "metadata": dumps(meta),
        }
        full = (
            "SELECT 1 WHERE (SELECT COUNT(*) FROM credentials WHERE tenant_id = ? AND vault_id = ? "
            "AND archived_at IS NULL) >= ?",
            (self.tenant_id, vault_id, MAX_ACTIVE_PER_VAULT),
        )
        lock_vault = Statement(
            "UPDATE vaults SET updated_at = updated_at WHERE tenant_id = ? AND id = ? AND archived_at IS NULL",
            (self.tenant_id, vault_id),
            expect_rows=True,
        )
        try:
            result = await self._db.run_batch([lock_vault, self._insert(credential_id, now, values, unless=full)])
        except Exception as exc:
            if self._db.dialect.is_unique_violation(exc):
                raise self._mcp_taken(vault_id, checked.get("mcp_server_url")) from None
            raise
        if result.aborted_at == 0:
            vault = await self._db.fetch_one(
                "SELECT archived_at FROM vaults WHERE tenant_id = ? AND id = ?", (self.tenant_id, vault_id)
            )
            if vault is None:
                raise NotFound(f"vault {vault_id} not found", vault_id=vault_id)
            raise Conflict(f"vault {vault_id} is archived", vault_id=vault_id)
        if result.aborted_at == 1:
            raise Conflict(
                f"vault {vault_id} already has {MAX_ACTIVE_PER_VAULT} active credentials; archive one first",
                vault_id=vault_id,
                limit=MAX_ACTIVE_PER_VAULT,
            )
        created = ms_to_datetime(now)
        return Credential(
            id=credential_id,
            tenant_id=self.tenant_id,
            display_name=name,
            vault_id=vault_id,
            auth=public_part(checked),
            auth_preview=values["auth_preview"],
            metadata=meta,
            created_at=created,
            updated_at=created,
        )

    @staticmethod
    def _mcp_taken(vault_id: str, url: str | None) -> Conflict:
        return Conflict(
            f"an active credential of vault {vault_id} already serves this mcp_server_url",
            vault_id=vault_id,
            mcp_server_url=url,
        )

    async def reveal(self, credential_id: str) -> dict[str, Any]:
        """The plaintext ``auth`` of a credential: the one way to read a secret."""
        row = await self._row(credential_id)
        auth: dict[str, Any] = loads(self._keys.open(row["auth_sealed"], PURPOSE, self._place(credential_id)))
        return auth

    async def update(self, credential_id: str, **changes: Any) -> Credential:
        """Rename (``display_name``), merge a ``metadata`` patch, or replace ``auth``.

        A new ``auth`` keeps the credential's type and ``mcp_server_url`` (both may be omitted; a different
        one is ``InvalidInput``) and is written as a compare-and-set on the stored ciphertext.
        """
        auth = changes.pop("auth", None)
        current = await self._update(credential_id, changes) if changes else None
        if auth is None:
            return current if current is not None else await self.get(credential_id)
        if not isinstance(auth, dict):
            raise InvalidInput("auth must be an object", field="auth")
        return await self._swap_auth(credential_id, lambda old: self._replacement(old, auth))

    @staticmethod
    def _replacement(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        merged = {"type": old["type"], **new}
        if old["type"] == "mcp_oauth":
            merged.setdefault("mcp_server_url", old["mcp_server_url"])
        checked = check_auth(merged)
        if checked["type"] != old["type"]:
            raise InvalidInput("a credential's auth.type cannot change", field="auth.type")
        if checked.get("mcp_server_url") != old.get("mcp_server_url"):
            raise InvalidInput("a credential's auth.mcp_server_url is immutable", field="auth.mcp_server_url")
        return checked

    async def refresh(
        self,
        credential_id: str,
        *,
        expected: str,
        access_token: str,
        refresh_token: str | None = None,
        expires_at: int | None = None,
    ) -> Credential:
        """OAuth write-back of an ``mcp_oauth`` credential, only if its refresh token is still ``expected``.

        ``expected`` is the refresh token the caller spent. If another refresher got there first, the stored
        token differs and this is a ``Conflict`` (read the winner's tokens with :meth:`reveal`); the write
        itself is a compare-and-set on the stored ciphertext.
        """

        def refreshed(old: dict[str, Any]) -> dict[str, Any]:
            if old["type"] != "mcp_oauth":
                raise InvalidInput("only an mcp_oauth credential can be refreshed", field="auth.type")
            stored = old.get("refresh_token") or ""
            if not isinstance(expected, str) or not hmac.compare_digest(stored.encode(), expected.encode()):
                raise Conflict(
                    f"credential {credential_id} was refreshed by someone else; reveal it for the new tokens",
                    credential_id=credential_id,
                )
            new = {**old, "access_token": access_token}
            if refresh_token is not None:
                new["refresh_token"] = refresh_token
            if expires_at is not None:
                new["expires_at"] = expires_at
            return check_auth(new)

        return await self._swap_auth(credential_id, refreshed, retry=False)

    async def _swap_auth(self, credential_id: str, change: Any, *, retry: bool = True) -> Credential:
        """Write ``change(old auth)`` if the stored ciphertext is still the one it was computed from."""
        await self._ensure_owner()
        for _ in range(_CAS_RETRIES if retry else 1):
            row = await self._row(credential_id)
            if row["archived_at"] is not None:
                raise self._archived(credential_id)
            old = loads(self._keys.open(row["auth_sealed"], PURPOSE, self._place(credential_id)))
            columns = self._sealed_columns(credential_id, change(old))
            sets = ", ".join(f"{c} = ?" for c in columns)
            statement = Statement(
                f"UPDATE credentials SET {sets}, updated_at = ? WHERE tenant_id = ? AND id = ? "
                "AND auth_sealed = ? AND archived_at IS NULL RETURNING *",
                (*columns.values(), self._clock.now_ms(), self.tenant_id, credential_id, row["auth_sealed"]),
                fetch=True,
                expect_rows=True,
            )
            result = await self._db.run_batch([statement])
            if result.committed:
                return self.from_row(result.rows[0][0])
        raise Conflict(
            f"credential {credential_id} changed under this write; read it again and retry",
            credential_id=credential_id,
        )
