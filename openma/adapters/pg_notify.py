"""Postgres LISTEN/NOTIFY for the live tail: wake this process when another one appends.

Writers call ``pg_notify(CHANNEL, payload)`` inside the write unit that appends (so the notification is
sent if and only if the write commits). Each process that tails sessions holds one dedicated connection
(not a pooled one: a pooled connection would be reused by queries, and its notifications would be read by
whoever holds it) that ``LISTEN``s on :data:`CHANNEL` and turns every notification into an in-process
wake-up on the :class:`~openma.core.tail.WakeHub`.

Notifications carry no data, only which session moved; followers re-read the log. So a lost notification
(the listener reconnecting, a dropped connection) delays an event and never loses it: while the listener
is down the followers poll, and on every reconnect every follower is woken to re-read. Each failure the
listener recovers from (a failed connect, a lost connection, a failed close) is logged with its secrets
masked and reported as ``silent_catch`` telemetry.

psycopg's async driver runs on asyncio only, like the Postgres engine itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from openma.adapters.sql.wakeups import EVENTS, INBOX
from openma.core.tail import WakeHub
from openma.ports.telemetry import NullTelemetry, Telemetry
from openma.redact import redact_secrets

__all__ = ["CHANNEL", "EVENTS", "INBOX", "PgListener", "conninfo_of", "parse", "payload"]

#: The one channel every openma writer notifies on.
CHANNEL: Final = "openma_events"
# EVENTS and INBOX (the payload kinds: the log of a session grew, or its inbox did) are the wake-up kinds of
# openma.adapters.sql.wakeups, kept here as aliases.

log = logging.getLogger("openma.pg_notify")


def payload(kind: str, tenant_id: str, session_id: str) -> str:
    return f"{kind} {tenant_id} {session_id}"


def parse(text: str) -> tuple[str, str, str] | None:
    parts = text.split(" ")
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def conninfo_of(client: Any) -> str | None:
    """The connection string of a Postgres client (the settings' URL with openma's options), else ``None``."""
    conninfo = getattr(client, "conninfo", None)
    return conninfo if isinstance(conninfo, str) else None


class PgListener:
    """One dedicated LISTEN connection that feeds a :class:`WakeHub` until closed; reconnects by itself."""

    def __init__(
        self,
        conninfo: str,
        hub: WakeHub,
        *,
        channel: str = CHANNEL,
        retry_max: float = 5.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._conninfo = conninfo
        self.telemetry: Telemetry = telemetry or NullTelemetry()
        self._hub = hub
        self._channel = channel
        self._retry_max = retry_max
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._listening = asyncio.Event()
        self._changed = asyncio.Condition()
        self._closed = False
        #: How many times the LISTEN connection was established (reconnects included).
        self.connects = 0

    def __repr__(self) -> str:
        return f"PgListener(channel={self._channel!r}, healthy={self.healthy})"

    @property
    def healthy(self) -> bool:
        """True while the LISTEN connection is up (followers may then wait for pushes, not poll)."""
        return self._listening.is_set()

    def start(self) -> None:
        """Start listening in the background (idempotent; call from the event loop that will use it)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="openma-pg-listener")

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until ``LISTEN`` is in place (tests and benchmarks use it); False on timeout."""
        return await self.wait_connects(1, timeout)

    async def wait_connects(self, count: int, timeout: float) -> bool:
        """Wait until the listener has connected ``count`` times and is listening; False on timeout."""
        self.start()

        def reached() -> bool:
            return self.connects >= count and self.healthy

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(reached), timeout)
        except TimeoutError:
            return False
        return True

    def _silent(self, where: str, exc: BaseException) -> str:
        """Report a failure the listener recovers from; returns its message, secrets masked."""
        message = redact_secrets(str(exc).strip() or type(exc).__name__, self._conninfo)
        self.telemetry.emit("silent_catch", where=where, error=type(exc).__name__, message=message[:300])
        return message

    async def _close(self, conn: Any) -> None:
        try:
            await conn.close()
        except Exception as exc:
            self._silent("pg_notify.close", exc)

    async def _announce(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _run(self) -> None:
        import psycopg

        delay = 0.05
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except Exception as exc:
                reason = self._silent("pg_notify.connect", exc)
                log.warning("openma LISTEN connection failed (%s); followers poll until it is back", reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self._conn = conn
            try:
                await conn.execute(f"LISTEN {self._channel}")
                self.connects += 1
                self._listening.set()
                await self._announce()
                delay = 0.05
                self._hub.notify_all()  # notifications may have been missed while down: everyone re-reads
                async for note in conn.notifies():
                    parsed = parse(note.payload)
                    if parsed is not None:
                        self._hub.notify(parsed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closed:
                    reason = self._silent("pg_notify.listen", exc)
                    log.warning("openma LISTEN connection lost (%s); reconnecting", reason)
            finally:
                self._listening.clear()
                self._conn = None
                await self._close(conn)
                if not self._closed:
                    self._hub.notify_all()
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # pragma: no cover - _run handles its own errors
                self._silent("pg_notify.aclose", exc)
