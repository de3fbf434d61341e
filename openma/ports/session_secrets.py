"""Per-session secret values (an ``env_secret`` resource's value, a repository token), bound to one tenant.

Values are stored only encrypted, each bound to its tenant, session and name; they never enter the event
log, the KV store or a snapshot, and they are deleted with their session (in the same write unit).
"""

from __future__ import annotations

from typing import Protocol


class SessionSecretStore(Protocol):
    """Named secret values of a tenant's sessions.

    ``put`` sets (or replaces) one value of a live session (``NotFound`` for an unknown or deleted
    session); ``reveal`` reads it back (``NotFound`` for an unknown name); ``names`` lists the names, never
    the values; ``remove`` deletes one (``NotFound`` if absent).
    """

    tenant_id: str

    async def put(self, session_id: str, name: str, value: str) -> None: ...

    async def reveal(self, session_id: str, name: str) -> str: ...

    async def names(self, session_id: str) -> list[str]: ...

    async def remove(self, session_id: str, name: str) -> None: ...
