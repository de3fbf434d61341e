"""Per-session secrets on the SQL family: one sealed value per (session, name), deleted with the session."""

from __future__ import annotations

import re
from typing import Final

from openma.core import validate
from openma.core.clock import Clock, SystemClock
from openma.core.ids import check_id
from openma.errors import InvalidInput, NotFound
from openma.models import Place
from openma.ports.sealing import Sealer
from openma.ports.sql import SqlClient, Statement
from openma.ports.tenancy import TenantRef

#: The HKDF purpose of the session-secret key.
PURPOSE: Final = "session_secrets"
MAX_VALUE: Final = 65_536
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidInput(
            "a session secret's name is 1 to 128 of A-Z a-z 0-9 _ . - (not starting with a digit)", field="name"
        )
    return value


class SqlSessionSecretStore:
    """The :class:`~openma.ports.session_secrets.SessionSecretStore` port over the ``session_secrets`` table."""

    def __init__(self, client: SqlClient, tenant: TenantRef, keys: Sealer, clock: Clock | None = None) -> None:
        self._db = client
        self._tenant = tenant
        self._keys = keys
        self._clock = clock or SystemClock()
        self.tenant_id = tenant.tenant_id

    def __repr__(self) -> str:
        return f"SqlSessionSecretStore(tenant_id={self.tenant_id!r})"

    def _place(self, session_id: str, name: str) -> Place:
        return Place(self.tenant_id, "session_secrets", session_id, name)

    async def put(self, session_id: str, name: str, value: str) -> None:
        check_id(session_id, "ses", what="session_id")
        name = _name(name)
        plain = validate.text(value, "value", max_len=MAX_VALUE, min_len=1)
        await self._tenant.ensure()
        sealed = self._keys.seal(plain.encode("utf-8"), PURPOSE, self._place(session_id, name))
        statement = Statement(
            "INSERT INTO session_secrets (tenant_id, session_id, name, sealed, created_at) SELECT ?, ?, ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM sessions WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL) "
            "ON CONFLICT (tenant_id, session_id, name) DO UPDATE SET sealed = excluded.sealed",
            (self.tenant_id, session_id, name, sealed, self._clock.now_ms(), self.tenant_id, session_id),
            expect_rows=True,
        )
        if not (await self._db.run_batch([statement])).committed:
            raise NotFound(f"session {session_id} not found", session_id=session_id)

    async def reveal(self, session_id: str, name: str) -> str:
        check_id(session_id, "ses", what="session_id")
        name = _name(name)
        row = await self._db.fetch_one(
            "SELECT s.sealed FROM session_secrets s"
            " JOIN sessions x ON x.tenant_id = s.tenant_id AND x.id = s.session_id"
            " WHERE s.tenant_id = ? AND s.session_id = ? AND s.name = ? AND x.deleted_at IS NULL",
            (self.tenant_id, session_id, name),
        )
        if row is None:
            raise NotFound(f"session {session_id} has no secret named {name!r}", session_id=session_id, name=name)
        return self._keys.open(row["sealed"], PURPOSE, self._place(session_id, name)).decode("utf-8")

    async def names(self, session_id: str) -> list[str]:
        check_id(session_id, "ses", what="session_id")
        rows = await self._db.fetch_all(
            "SELECT name FROM session_secrets WHERE tenant_id = ? AND session_id = ? ORDER BY name",
            (self.tenant_id, session_id),
        )
        return [r["name"] for r in rows]

    async def remove(self, session_id: str, name: str) -> None:
        check_id(session_id, "ses", what="session_id")
        name = _name(name)
        changed = await self._db.execute(
            "DELETE FROM session_secrets WHERE tenant_id = ? AND session_id = ? AND name = ?",
            (self.tenant_id, session_id, name),
        )
        if not changed:
            raise NotFound(f"session {session_id} has no secret named {name!r}", session_id=session_id, name=name)
