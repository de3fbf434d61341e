"""Vaults on the SQL family: named groups of credentials; a vault itself holds no secret."""

from __future__ import annotations

from typing import Any, Final

from openma.adapters.sql.entity import TenantBoundStore, optional_text
from openma.core import validate
from openma.core.ids import check_id
from openma.core.jsonutil import dumps, loads
from openma.models import Vault
from openma.ports.sql import Row, Statement

MAX_DESCRIPTION: Final = 10_000


class SqlVaultStore(TenantBoundStore[Vault]):
    """Vaults of one tenant. A name is used by one active vault; archive and delete take its credentials along."""

    table = "vaults"
    prefix = "vlt"
    noun = "vault"
    fields = {"name": validate.name, "description": optional_text("description", max_len=MAX_DESCRIPTION)}
    unique_names = True
    dependents = {"credentials": "vault_id"}

    def from_row(self, row: Row) -> Vault:
        return Vault(**self._common(row), description=row["description"], metadata=loads(row["metadata"]))

    async def create(self, *, name: str, description: str = "", metadata: dict[str, Any] | None = None) -> Vault:
        values = {
            "name": validate.name(name),
            "description": self.fields["description"](description),
            "metadata": dumps(validate.metadata(metadata)),
        }
        vault_id, _ = await self._create(values)
        return await self.get(vault_id)

    async def update(self, vault_id: str, **changes: Any) -> Vault:
        """Replace ``name``/``description``, merge a ``metadata`` patch; only what is named is written."""
        return await self._update(vault_id, changes)

    async def archive(self, vault_id: str) -> Vault:
        """Archive the vault and every active credential of it, in one write unit (idempotent)."""
        check_id(vault_id, self.prefix, what=self._id_field)
        now = self._clock.now_ms()
        key = (self.tenant_id, vault_id)
        result = await self._db.run_batch(
            [
                Statement(
                    "UPDATE vaults SET archived_at = COALESCE(archived_at, ?), updated_at = ? "
                    "WHERE tenant_id = ? AND id = ? RETURNING *",
                    (now, now, *key),
                    fetch=True,
                    expect_rows=True,
                ),
                Statement(
                    "UPDATE credentials SET archived_at = ?, updated_at = ? "
                    "WHERE tenant_id = ? AND vault_id = ? AND archived_at IS NULL",
                    (now, now, *key),
                ),
            ]
        )
        if not result.committed:
            raise self._not_found(vault_id)
        return self.from_row(result.rows[0][0])
