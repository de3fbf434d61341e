"""Lease locks as Postgres session-level advisory locks, each on its own dedicated connection.

The lock lives exactly as long as the connection: a holder whose process dies, or whose connection is
dropped or terminated (``pg_terminate_backend``), frees it at once on the server, so the next holder takes
over without waiting out a timeout. Keys are hashed to the signed 64-bit space of ``pg_advisory_lock``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Final

import anyio

from openma.errors import SessionBusy, StorageUnavailable

_POLL_START: Final = 0.005
_POLL_MAX: Final = 0.05


def lock_key(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


class PgAdvisoryHandle:
    def __init__(self, key: str, conn: Any) -> None:
        self._key = key
        self._conn: Any = conn

    def __repr__(self) -> str:
        return f"PgAdvisoryHandle({self._key!r}, alive={self.alive()})"

    @property
    def key(self) -> str:
        return self._key

    def alive(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and conn.pgconn.status == 0

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await conn.close()  # closing the session frees every advisory lock it holds
            except Exception:
                pass


class PgAdvisoryLeaseLock:
    """Takes each lock on a new connection made from ``conninfo`` (not from the pool)."""

    def __init__(self, conninfo: str, psycopg: Any) -> None:
        self._conninfo = conninfo
        self._psycopg = psycopg

    def __repr__(self) -> str:
        return "PgAdvisoryLeaseLock()"

    async def acquire(self, key: str, *, wait: float) -> PgAdvisoryHandle:
        psycopg = self._psycopg
        ident = lock_key(key)
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StorageUnavailable(f"cannot open a lease connection: {exc}", engine="postgres") from exc
        try:
            deadline = time.monotonic() + max(0.0, wait)
            delay = _POLL_START
            while True:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (ident,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    return PgAdvisoryHandle(key, conn)
                if time.monotonic() >= deadline:
                    raise SessionBusy(f"{key} is held by another actor", key=key, waited=wait)
                await anyio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, _POLL_MAX)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await conn.close()
            if isinstance(exc, psycopg.Error):
                raise StorageUnavailable(f"lease connection failed: {exc}", engine="postgres") from exc
            raise

    async def aclose(self) -> None:
        return None
