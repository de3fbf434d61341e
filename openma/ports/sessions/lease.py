"""The ``SessionLease`` port: the epoch that fences the actor's writes, and the sandbox record it guards."""

from __future__ import annotations

from typing import Any, Protocol

from openma.ports.sessions.values import UNSET, LeaseGrant, SandboxRecord, Unset


class SessionLease(Protocol):
    """Used by the session's actor, under its lease lock."""

    async def take_lease(self, session_id: str, holder: str) -> LeaseGrant:
        """Bump the session's lease epoch and record ``holder``, in one transaction."""
        ...

    async def drop_lease(self, session_id: str, epoch: int) -> bool:
        """Clear the holder if ``epoch`` is still current (a clean release); ``False`` if it was not."""
        ...

    async def sandbox_record(self, session_id: str) -> SandboxRecord:
        """The lease epoch, recorded sandbox id and latest snapshot of the session (one read)."""
        ...

    async def record_sandbox(
        self,
        session_id: str,
        *,
        sandbox_id: str | Unset | None = UNSET,
        snapshot: dict[str, Any] | Unset | None = UNSET,
        fence: int | None = None,
    ) -> SandboxRecord:
        """Set what is given (``None`` clears it), the epoch checked in the same transaction (``LeaseLost``
        and nothing written when ``fence`` is stale); return the record as it was before."""
        ...
