"""The lease lock under a SessionActor: an exclusive lock that dies with its holder.

The lock says who may *try* to write a session; the epoch (bumped by the holder right after it takes the
lock, checked by every write in the same transaction) is what makes a write of a stale holder impossible.
The lock only has to guarantee that, while a holder is alive and connected, nobody else gets it, and that
it is freed as soon as the holder dies (process killed, connection dropped), with no lease timeout to wait.

Contract:

* ``acquire(key, wait=)`` returns a :class:`LeaseHandle`, waiting up to ``wait`` seconds (``0`` = try
  once); it raises :class:`~openma.errors.SessionBusy` when the lock stays taken.
* ``LeaseHandle.alive()`` is ``False`` once the lock may have been lost (its connection dropped).
* ``LeaseHandle.release()`` frees the lock; idempotent.
* Locks are exclusive across tasks, processes and (for network locks) hosts.
"""

from __future__ import annotations

from typing import Protocol


class LeaseHandle(Protocol):
    @property
    def key(self) -> str: ...

    def alive(self) -> bool: ...

    async def release(self) -> None: ...


class LeaseLock(Protocol):
    async def acquire(self, key: str, *, wait: float) -> LeaseHandle: ...

    async def aclose(self) -> None: ...
