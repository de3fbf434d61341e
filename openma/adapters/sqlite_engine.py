"""The "cf" store backend: the SQL store family on SQLite (the engine under Cloudflare D1).

What SQLite does its own way:

* Lease locks are ``flock`` files in a directory beside the database file (``<path>.leases``): exclusive
  across processes on one host, freed by the kernel when the holder dies.
* There is no cross-process wake-up channel: followers in other processes re-read every
  ``sqlite_poll_interval`` (in-process followers are woken right after each commit).
* Appends use the portable write unit (a checked ``UPDATE`` then the ``INSERT``, one thread hop).
"""

from __future__ import annotations

from typing import Protocol

from openma.adapters.locks.flock import FlockLeaseLock
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.engine import SqlEngine, migrations_folder
from openma.adapters.sqlite import open_sqlite_client
from openma.ports.lease import LeaseLock
from openma.ports.sql import SqlClient
from openma.ports.telemetry import Telemetry
from openma.settings import Settings

__all__ = ["SqliteEngine", "open_store_backend"]


class SqliteLike(SqlClient, Protocol):
    """A SQLite client (or a wrapper of one): a SqlClient that names its database file."""

    @property
    def path(self) -> str:
        """The database file."""
        ...


class SqliteEngine(SqlEngine):
    """The SQLite engine: ``flock`` lease locks beside the file, no wake-up channel, portable appends."""

    migrations = migrations_folder("sqlite")

    def __init__(self, client: SqliteLike) -> None:
        super().__init__(client)
        self._sqlite = client

    @property
    def client(self) -> SqliteLike:
        return self._sqlite

    def lease_lock(self, telemetry: Telemetry) -> LeaseLock:
        """``flock`` files in ``<path>.leases`` (the lock has no failures to report)."""
        return FlockLeaseLock(f"{self._sqlite.path}.leases")


async def open_store_backend(settings: Settings) -> SqlStoreBackend:
    """Entry point of the "cf" store backend."""
    client = await open_sqlite_client(settings)
    return SqlStoreBackend("cf", SqliteEngine(client))
