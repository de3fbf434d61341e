"""The key-value store, bound to one tenant: small config, flags, locks and counters.

Contract:

* **Keys** are 1-512 bytes of UTF-8 without control characters (C0, DEL, C1); anything else is
  ``InvalidInput``. Keys are namespaced per tenant: a store bound to one tenant never sees another's.
* **Values** are ``str`` (text, at most 1 MiB of UTF-8, no NUL) or ``int`` (a signed 64-bit counter). The
  type round-trips: ``put(k, 5)`` reads back ``5``, ``put(k, "5")`` reads back ``"5"``.
* **TTL**: every write that sets a value (``put``, ``put_if_absent``, ``compare_and_set``) sets its expiry
  from ``ttl`` (seconds or ``timedelta``; ``None`` means it never expires). ``incr`` sets the expiry only
  when it creates the counter, so a quota counter keeps the window it was opened with. An expired entry is
  absent for every read and condition, whether or not ``sweep_expired`` has deleted it yet;
  ``sweep_expired`` deletes expired entries and returns how many.
* **incr(key, by)** is atomic: N concurrent ``incr(k, 1)`` on an absent key leave exactly N. An absent or
  expired key starts from 0. A key holding text, or a result outside the signed 64-bit range, is
  ``Conflict`` with nothing written.
* **put_if_absent** writes only if no live entry exists and says whether it did; of several racing
  callers exactly one gets ``True``.
* **compare_and_set(key, expected, value)** writes only if the live value equals ``expected`` (same type
  and value; ``expected=None`` means "absent") and says whether it did.
* **delete** is idempotent and says whether a live entry was removed.
* **list(prefix)** returns live entries whose key starts with ``prefix``, a literal string (``%``, ``_``
  and ``\\`` are ordinary characters, and case matters), ordered by key in code point order, ``limit``
  (1-1000) at a time, with a keyset cursor: entries written or deleted between pages never shift the
  pages. A cursor from another prefix or tenant, or one that does not decode, is ``InvalidInput``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol, TypeAlias

import attrs

from openma.models import Page

KVValue: TypeAlias = str | int
TTL: TypeAlias = float | int | timedelta


@attrs.frozen
class KVEntry:
    """One live entry."""

    key: str
    value: KVValue
    updated_at: datetime
    expires_at: datetime | None = None


class KVStore(Protocol):
    """A tenant's key-value namespace (see the module docstring for the contract)."""

    tenant_id: str

    async def get(self, key: str) -> KVEntry | None: ...

    async def put(self, key: str, value: KVValue, *, ttl: TTL | None = None) -> KVEntry: ...

    async def delete(self, key: str) -> bool: ...

    async def list(self, prefix: str = "", *, cursor: str | None = None, limit: int = 100) -> Page[KVEntry]: ...

    async def incr(self, key: str, by: int = 1, *, ttl: TTL | None = None) -> int: ...

    async def put_if_absent(self, key: str, value: KVValue, *, ttl: TTL | None = None) -> bool: ...

    async def compare_and_set(
        self, key: str, expected: KVValue | None, value: KVValue, *, ttl: TTL | None = None
    ) -> bool: ...

    async def sweep_expired(self) -> int: ...
