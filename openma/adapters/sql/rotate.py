"""Key rotation over every sealed column of the SQL family (admin level: it reads across tenants).

:func:`admin_key_status` counts the ciphertexts each key id still protects; :func:`admin_rotate` re-seals
every ciphertext that is not under the current key, in bounded batches. Each batch is one write unit and
each row's update is a compare-and-set on the ciphertext it read, so a concurrent write (an OAuth
refresh, already sealed under the current key) always wins, and a crash loses at most the batch in
flight: running it again carries on with what is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import attrs

from openma.core.secrets import FORMAT, KeyRing
from openma.errors import SecretUnreadable
from openma.models import Place
from openma.ports.sql import Row, SqlClient, Statement

DEFAULT_BATCH: Final = 500


@attrs.frozen
class SealedColumn:
    """A column holding sealed values: its table and key columns, and how a row names its place."""

    store: str
    table: str
    keys: tuple[str, ...]
    column: str
    purpose: str
    place: Callable[[Row], Place]


#: Every sealed column, by the store (``STORE_BACKENDS`` name) whose backend holds it.
SEALED: Final[tuple[SealedColumn, ...]] = (
    SealedColumn(
        "vaults",
        "credentials",
        ("tenant_id", "id"),
        "auth_sealed",
        "credentials",
        lambda r: Place(r["tenant_id"], "credentials", r["id"], "auth"),
    ),
    SealedColumn(
        "sessions",
        "session_secrets",
        ("tenant_id", "session_id", "name"),
        "sealed",
        "session_secrets",
        lambda r: Place(r["tenant_id"], "session_secrets", r["session_id"], r["name"]),
    ),
)


@attrs.frozen
class RotationReport:
    """What a rotation did: re-sealed, already current (or changed meanwhile), and unreadable rows."""

    rotated: int = 0
    skipped: int = 0
    unreadable: int = 0

    def __add__(self, other: RotationReport) -> RotationReport:
        return RotationReport(
            self.rotated + other.rotated, self.skipped + other.skipped, self.unreadable + other.unreadable
        )


def _key_id_sql(column: str) -> str:
    return f"SUBSTR({column}, {len(FORMAT) + 2}, 16)"


async def admin_key_status(client: SqlClient, columns: Sequence[SealedColumn] = SEALED) -> dict[str, int]:
    """How many ciphertexts each key id protects, over ``columns`` of this database."""
    counts: dict[str, int] = {}
    for col in columns:
        key_id = _key_id_sql(col.column)
        rows = await client.fetch_all(f"SELECT {key_id} AS key_id, COUNT(*) AS n FROM {col.table} GROUP BY {key_id}")
        for row in rows:
            counts[row["key_id"]] = counts.get(row["key_id"], 0) + int(row["n"])
    return counts


async def admin_pending(client: SqlClient, keys: KeyRing, columns: Sequence[SealedColumn] = SEALED) -> int:
    """How many ciphertexts are not under the current key."""
    total = 0
    for col in columns:
        row = await client.fetch_one(
            f"SELECT COUNT(*) AS n FROM {col.table} WHERE {col.column} NOT LIKE ?", (_current(keys),)
        )
        total += int(row["n"]) if row is not None else 0
    return total


def _current(keys: KeyRing) -> str:
    return f"{FORMAT}.{keys.key_id}.%"


async def admin_rotate(
    client: SqlClient,
    keys: KeyRing,
    *,
    columns: Sequence[SealedColumn] = SEALED,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
) -> RotationReport:
    """Re-seal every ciphertext of ``columns`` under ``keys``' current key; ``progress(n)`` after each batch.

    A value that cannot be opened (its key id is in no root secret given, or it does not authenticate) is
    left as it is and counted in ``unreadable``; the rest carries on.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= 10_000:
        raise ValueError("batch_size must be an int from 1 to 10000")
    report = RotationReport()
    for col in columns:
        keyset = ", ".join(col.keys)
        marks = ", ".join("?" for _ in col.keys)
        match = " AND ".join(f"{k} = ?" for k in col.keys)
        after: tuple[str, ...] | None = None
        while True:
            where, params = f"{col.column} NOT LIKE ?", [_current(keys)]
            if after is not None:
                where += f" AND ({keyset}) > ({marks})"
                params += after
            rows = await client.fetch_all(
                f"SELECT {keyset}, {col.column} FROM {col.table} WHERE {where} ORDER BY {keyset} LIMIT ?",
                (*params, batch_size),
            )
            if not rows:
                break
            after = tuple(rows[-1][k] for k in col.keys)
            statements: list[Statement] = []
            unreadable = 0
            for row in rows:
                try:
                    new = keys.reseal(row[col.column], col.purpose, col.place(row))
                except SecretUnreadable:
                    unreadable += 1
                    continue
                if new is not None:
                    statements.append(
                        Statement(
                            f"UPDATE {col.table} SET {col.column} = ? WHERE {match} AND {col.column} = ?",
                            (new, *(row[k] for k in col.keys), row[col.column]),
                        )
                    )
            done = sum((await client.run_batch(statements)).rowcounts) if statements else 0
            report = report + RotationReport(done, len(rows) - unreadable - done, unreadable)
            if progress is not None:
                progress(len(rows))
    return report


__all__ = [
    "DEFAULT_BATCH",
    "SEALED",
    "RotationReport",
    "SealedColumn",
    "admin_key_status",
    "admin_pending",
    "admin_rotate",
]
