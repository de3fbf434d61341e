"""The KV store on the SQL family: every operation is one statement, so it is atomic on both engines.

* ``incr`` is one upsert whose ``DO UPDATE`` adds to the counter (or restarts an expired one) and whose
  ``WHERE`` refuses text values and int64 overflow, so concurrent increments never lose an update and a
  refused one writes nothing.
* ``put_if_absent`` is one upsert that replaces only an expired row; ``RETURNING`` says whether it wrote.
  A live row makes it a no-op, and a racing insert of the same key waits for the winner, then finds it.
* ``compare_and_set`` is one conditional ``UPDATE``.
* Prefix scans are a key range (``key >= prefix AND key < successor``), not ``LIKE``: pattern characters
  are literal, case matters on every engine (SQLite's ``LIKE`` ignores ASCII case), and the primary key
  serves the scan. Pages are keyset on the key, never an offset.
* TTLs are checked on every read; ``sweep_expired`` deletes expired rows in batches.
"""

from __future__ import annotations

from typing import Any, Final

from openma.core.clock import Clock, SystemClock, ms_to_datetime
from openma.core.keys import (
    decode_key_cursor,
    encode_key_cursor,
    key_prefix,
    kv_key,
    prefix_upper_bound,
    ttl_ms,
)
from openma.core.pagination import check_limit, scope_of
from openma.errors import Conflict, InvalidInput
from openma.models import Page
from openma.ports.kv import TTL, KVEntry, KVValue
from openma.ports.sql import Row, SqlClient, Statement
from openma.ports.tenancy import TenantRef

MAX_VALUE_BYTES: Final = 1 << 20
MAX_LIMIT: Final = 1000
SWEEP_BATCH: Final = 500
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
_LIVE: Final = "(expires_at IS NULL OR expires_at > ?)"
_EXPIRED_ROW: Final = "(kv_entries.expires_at IS NOT NULL AND kv_entries.expires_at <= ?)"
_COLUMNS: Final = "key, value, counter, expires_at, updated_at"


def _int64(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer, got {type(value).__name__}", field=what)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidInput(f"{what} is outside the signed 64-bit range", field=what)
    return value


def _value(value: object, what: str = "value") -> tuple[str | None, int | None]:
    """Split a value into its two columns: ``(text, None)`` or ``(None, counter)``."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(f"{what} must not contain NUL characters", field=what)
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput(f"{what} is not valid Unicode (lone surrogate)", field=what) from None
        if size > MAX_VALUE_BYTES:
            raise InvalidInput(f"{what} is too large ({size} > {MAX_VALUE_BYTES} bytes)", field=what)
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        return None, _int64(value, what)
    raise InvalidInput(f"{what} must be a str or an int, got {type(value).__name__}", field=what)


def _entry(row: Row) -> KVEntry:
    value: KVValue = row["value"] if row["value"] is not None else int(row["counter"])
    expires = row["expires_at"]
    return KVEntry(
        key=row["key"],
        value=value,
        updated_at=ms_to_datetime(int(row["updated_at"])),
        expires_at=ms_to_datetime(int(expires)) if expires is not None else None,
    )


class SqlKVStore:
    """A tenant's KV namespace on one :class:`~openma.ports.sql.SqlClient`."""

    def __init__(self, client: SqlClient, tenant: TenantRef, clock: Clock | None = None) -> None:
        self._db = client
        self._tenant = tenant
        self.tenant_id = tenant.tenant_id
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"SqlKVStore(tenant_id={self.tenant_id!r})"

    def _expiry(self, ttl: TTL | None, now: int) -> int | None:
        ms = ttl_ms(ttl)
        return None if ms is None else now + ms

    async def get(self, key: str) -> KVEntry | None:
        key = kv_key(key)
        row = await self._db.fetch_one(
            f"SELECT {_COLUMNS} FROM kv_entries WHERE tenant_id = ? AND key = ? AND {_LIVE}",
            (self.tenant_id, key, self._clock.now_ms()),
        )
        return _entry(row) if row is not None else None

    async def put(self, key: str, value: KVValue, *, ttl: TTL | None = None) -> KVEntry:
        key = kv_key(key)
        text, counter = _value(value)
        now = self._clock.now_ms()
        expires = self._expiry(ttl, now)
        await self._tenant.ensure()
        await self._db.execute(
            "INSERT INTO kv_entries (tenant_id, key, value, counter, expires_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, key) DO UPDATE SET value = excluded.value,"
            " counter = excluded.counter, expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            (self.tenant_id, key, text, counter, expires, now),
        )
        return KVEntry(
            key=key,
            value=value,
            updated_at=ms_to_datetime(now),
            expires_at=ms_to_datetime(expires) if expires is not None else None,
        )

    async def delete(self, key: str) -> bool:
        key = kv_key(key)
        now = self._clock.now_ms()
        result = await self._db.run_batch(
            [
                Statement(
                    "DELETE FROM kv_entries WHERE tenant_id = ? AND key = ? RETURNING expires_at",
                    (self.tenant_id, key),
                    fetch=True,
                )
            ]
        )
        return any(r["expires_at"] is None or int(r["expires_at"]) > now for r in result.rows[0])

    async def list(self, prefix: str = "", *, cursor: str | None = None, limit: int = 100) -> Page[KVEntry]:
        prefix = key_prefix(prefix)
        limit = check_limit(limit, maximum=MAX_LIMIT)
        scope = scope_of("kv_entries", self.tenant_id, prefix)
        where = ["tenant_id = ?", _LIVE]
        params: list[Any] = [self.tenant_id, self._clock.now_ms()]
        if prefix:
            where.append("key >= ?")
            params.append(prefix)
            bound = prefix_upper_bound(prefix)
            if bound is not None:
                where.append("key < ?")
                params.append(bound)
        if cursor is not None:
            where.append("key > ?")
            params.append(decode_key_cursor(cursor, scope))
        params.append(limit + 1)
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM kv_entries WHERE {' AND '.join(where)} ORDER BY key LIMIT ?", params
        )
        page = rows[:limit]
        next_cursor = encode_key_cursor(scope, page[-1]["key"]) if len(rows) > limit else None
        return Page([_entry(r) for r in page], next_cursor)

    async def incr(self, key: str, by: int = 1, *, ttl: TTL | None = None) -> int:
        key = kv_key(key)
        by = _int64(by, "by")
        low = INT64_MIN - by if by < 0 else INT64_MIN
        high = INT64_MAX - by if by > 0 else INT64_MAX
        await self._tenant.ensure()
        while True:
            now = self._clock.now_ms()
            expires = self._expiry(ttl, now)
            result = await self._db.run_batch(
                [
                    Statement(
                        "INSERT INTO kv_entries (tenant_id, key, value, counter, expires_at, updated_at)"
                        " VALUES (?, ?, NULL, ?, ?, ?) ON CONFLICT (tenant_id, key) DO UPDATE SET"
                        f" counter = CASE WHEN {_EXPIRED_ROW} THEN excluded.counter"
                        " ELSE kv_entries.counter + excluded.counter END,"
                        " value = NULL,"
                        f" expires_at = CASE WHEN {_EXPIRED_ROW} THEN excluded.expires_at"
                        " ELSE kv_entries.expires_at END,"
                        " updated_at = excluded.updated_at"
                        f" WHERE {_EXPIRED_ROW} OR (kv_entries.counter IS NOT NULL"
                        " AND kv_entries.counter >= ? AND kv_entries.counter <= ?)"
                        " RETURNING counter",
                        (self.tenant_id, key, by, expires, now, now, now, now, low, high),
                        fetch=True,
                    )
                ]
            )
            if result.rows[0]:
                return int(result.rows[0][0]["counter"])
            current = await self.get(key)
            if current is None:
                continue  # deleted (or expired) between the two statements: try again
            if isinstance(current.value, str):
                raise Conflict(f"kv key {key!r} holds text, not a counter", key=key)
            raise Conflict(f"incrementing kv key {key!r} by {by} would overflow a signed 64-bit integer", key=key)

    async def put_if_absent(self, key: str, value: KVValue, *, ttl: TTL | None = None) -> bool:
        key = kv_key(key)
        text, counter = _value(value)
        now = self._clock.now_ms()
        expires = self._expiry(ttl, now)
        await self._tenant.ensure()
        result = await self._db.run_batch(
            [
                Statement(
                    "INSERT INTO kv_entries (tenant_id, key, value, counter, expires_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, key) DO UPDATE SET"
                    " value = excluded.value, counter = excluded.counter, expires_at = excluded.expires_at,"
                    f" updated_at = excluded.updated_at WHERE {_EXPIRED_ROW} RETURNING key",
                    (self.tenant_id, key, text, counter, expires, now, now),
                    fetch=True,
                )
            ]
        )
        return bool(result.rows[0])

    async def compare_and_set(
        self, key: str, expected: KVValue | None, value: KVValue, *, ttl: TTL | None = None
    ) -> bool:
        if expected is None:
            return await self.put_if_absent(key, value, ttl=ttl)
        key = kv_key(key)
        old_text, old_counter = _value(expected, "expected")
        text, counter = _value(value)
        now = self._clock.now_ms()
        expires = self._expiry(ttl, now)
        match = ("value = ?", old_text) if old_text is not None else ("counter = ?", old_counter)
        await self._tenant.ensure()
        changed = await self._db.execute(
            "UPDATE kv_entries SET value = ?, counter = ?, expires_at = ?, updated_at = ?"
            f" WHERE tenant_id = ? AND key = ? AND {_LIVE} AND {match[0]}",
            (text, counter, expires, now, self.tenant_id, key, now, match[1]),
        )
        return changed > 0

    async def sweep_expired(self) -> int:
        total = 0
        while True:
            deleted = await self._db.execute(
                "DELETE FROM kv_entries WHERE tenant_id = ? AND key IN (SELECT key FROM kv_entries"
                " WHERE tenant_id = ? AND expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                (self.tenant_id, self.tenant_id, self._clock.now_ms(), SWEEP_BATCH),
            )
            total += deleted
            if deleted < SWEEP_BATCH:
                return total
