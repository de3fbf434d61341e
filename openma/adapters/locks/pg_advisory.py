"""Lease locks as Postgres session-level advisory locks, each held on a dedicated connection.

The lock lives exactly as long as its hold on the connection: a holder whose process dies, or whose
connection is dropped or terminated (``pg_terminate_backend``), frees it at once on the server, so the next
holder takes over without waiting out a timeout. Keys are hashed to the signed 64-bit space of
``pg_advisory_lock``.

Lease connections are not the store's pool: a lock must never be released by a pool recycling its
connection. Released connections (explicitly unlocked, so nothing stays held) are kept for reuse, a few at
most, which saves a connection set-up per acquire.

An unlock or a close that fails is not raised (the lock went with its connection) but reported as
``silent_catch`` telemetry; messages built from driver errors have their connection secrets masked.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Final

import anyio

from openma.errors import SessionBusy, StorageUnavailable
from openma.ports.telemetry import NullTelemetry, Telemetry
from openma.redact import redact_secrets

_POLL_START: Final = 0.005
_POLL_MAX: Final = 0.05
#: Released lease connections kept for reuse.
IDLE_CONNECTIONS: Final = 4


def lock_key(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def _usable(conn: Any) -> bool:
    return conn is not None and not conn.closed and conn.pgconn.status == 0


class PgAdvisoryHandle:
    def __init__(self, owner: PgAdvisoryLeaseLock, key: str, conn: Any, ident: int) -> None:
        self._owner = owner
        self._key = key
        self._conn: Any = conn
        self._ident = ident

    def __repr__(self) -> str:
        return f"PgAdvisoryHandle({self._key!r}, alive={self.alive()})"

    @property
    def key(self) -> str:
        return self._key

    def alive(self) -> bool:
        return _usable(self._conn)

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with anyio.CancelScope(shield=True):
            unlocked = False
            try:
                # Unlock explicitly: closing a connection ends its server session asynchronously, so a waiter
                # could otherwise still find the lock taken for a moment after release() returned.
                cur = await conn.execute("SELECT pg_advisory_unlock(%s)", (self._ident,))
                row = await cur.fetchone()
                unlocked = bool(row and row[0])
            except Exception as exc:  # the connection is gone, and the lock with it
                self._owner._silent("pg_advisory.unlock", exc, key=self._key)
            await self._owner._give_back(conn, reusable=unlocked)


class PgAdvisoryLeaseLock:
    """Takes each lock on a connection of its own, made from ``conninfo`` (not from the store's pool)."""

    def __init__(self, conninfo: str, psycopg: Any, *, telemetry: Telemetry | None = None) -> None:
        self._conninfo = conninfo
        self._psycopg = psycopg
        self._idle: list[Any] = []
        #: Where failed unlocks and closes are reported (``silent_catch``).
        self.telemetry: Telemetry = telemetry or NullTelemetry()

    def _reason(self, exc: BaseException) -> str:
        return redact_secrets(str(exc).strip() or type(exc).__name__, self._conninfo)

    def _silent(self, where: str, exc: BaseException, **fields: Any) -> None:
        self.telemetry.emit(
            "silent_catch", where=where, error=type(exc).__name__, message=self._reason(exc)[:300], **fields
        )

    def __repr__(self) -> str:
        return f"PgAdvisoryLeaseLock(idle={len(self._idle)})"

    async def _connection(self) -> Any:
        while self._idle:
            conn = self._idle.pop()
            if _usable(conn):
                return conn
            await self._close(conn)
        psycopg = self._psycopg
        try:
            return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            reason = self._reason(exc)
            raise StorageUnavailable(f"cannot open a lease connection: {reason}", engine="postgres") from (
                exc if reason == str(exc).strip() else None
            )

    async def _give_back(self, conn: Any, *, reusable: bool) -> None:
        if reusable and _usable(conn) and len(self._idle) < IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            await self._close(conn)

    async def _close(self, conn: Any) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await conn.close()
            except Exception as exc:
                self._silent("pg_advisory.close", exc)

    async def acquire(self, key: str, *, wait: float) -> PgAdvisoryHandle:
        psycopg = self._psycopg
        ident = lock_key(key)
        conn = await self._connection()
        try:
            deadline = time.monotonic() + max(0.0, wait)
            delay = _POLL_START
            while True:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (ident,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    return PgAdvisoryHandle(self, key, conn, ident)
                if time.monotonic() >= deadline:
                    raise SessionBusy(f"{key} is held by another actor", key=key, waited=wait)
                await anyio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, _POLL_MAX)
        except BaseException as exc:
            await self._give_back(conn, reusable=isinstance(exc, SessionBusy))
            if isinstance(exc, psycopg.Error):
                reason = self._reason(exc)
                raise StorageUnavailable(f"lease connection failed: {reason}", engine="postgres") from (
                    exc if reason == str(exc).strip() else None
                )
            raise

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._close(conn)
