"""Partial updates: one ``UPDATE`` that writes only the columns a call names.

An update that reads a row, changes some fields in Python and writes every column back reverts whatever a
concurrent writer changed in between. Here the ``UPDATE`` assigns only the columns the caller named, and a
metadata patch is merged into the row's *current* value by the engine, inside the same statement, so two
concurrent patches of different keys both survive. The merge is top-level and key by key (the semantics of
:func:`openma.core.validate.merge_metadata`): a patched key is replaced whole, a ``None`` removes it. The
merged object's size limits are checked in the statement too, so a race cannot push it past them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openma.core import validate
from openma.core.jsonutil import dumps
from openma.ports.sql import Dialect, Statement


class PartialUpdate:
    """Collects the assignments of one row update; :meth:`statement` builds the guarded ``UPDATE``."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._sets: list[str] = []
        self._set_params: list[Any] = []
        self._guards: list[str] = []
        self._guard_params: list[Any] = []

    def set(self, column: str, value: Any) -> None:
        """Assign ``value`` to ``column``."""
        self._sets.append(f"{column} = ?")
        self._set_params.append(value)

    def guard(self, condition: str, params: Sequence[Any] = ()) -> None:
        """Write the row only if ``condition`` (SQL, with ``params``) holds for it as the statement runs."""
        self._guards.append(condition)
        self._guard_params.extend(params)

    def merge(
        self,
        column: str,
        patch: dict[str, Any],
        *,
        read: tuple[str, dict[str, Any]] | None = None,
        max_keys: int = validate.MAX_METADATA_KEYS,
        max_bytes: int = validate.MAX_METADATA_BYTES,
    ) -> None:
        """Merge ``patch`` (already validated) into the JSON object in ``column``; the row is left alone when
        the result would have more than ``max_keys`` members or ``max_bytes`` bytes.

        ``read`` is the stored text as last read and the merge computed from it. A value holding a ``\\u0000``
        escape (written before metadata refused NUL; Postgres's JSON functions cannot parse it) is not merged
        by the engine: the computed merge is written only if the stored text is still the one read, and the
        caller re-reads and retries when it is not.
        """
        if read is not None and "\\u0000" in read[0]:
            self.set(column, dumps(read[1]))
            self._guards.append(f"{column} = ?")
            self._guard_params.append(read[0])
            return
        members = dumps({k: v for k, v in patch.items() if v is not None})[1:-1]
        # Every patched key is dropped first (replaced whole, or removed), then the new members are appended
        # to the compact object text.
        merged = (
            "(SELECT substr(d, 1, length(d) - 1) || CASE WHEN length(d) > 2 AND m <> '' THEN ',' ELSE '' END"
            f" || m || '}}' FROM (SELECT {self._dialect.json_drop_keys(column)} AS d, CAST(? AS TEXT) AS m)"
            " AS merged)"
        )
        params = [dumps(list(patch)), members]
        self._sets.append(f"{column} = {merged}")
        self._set_params.extend(params)
        self._guards.append(f"{self._dialect.json_key_count(merged)} <= ?")
        self._guard_params.extend([*params, max_keys])
        self._guards.append(f"{self._dialect.byte_length(merged)} <= ?")
        self._guard_params.extend([*params, max_bytes])

    def statement(self, table: str, where: str, params: tuple[Any, ...], now: int) -> Statement:
        """``UPDATE table`` of the collected columns (and ``updated_at``, never moved backwards) on the rows
        matching ``where``, returning the row; the write unit aborts if no row matched."""
        sets = [*self._sets, "updated_at = CASE WHEN updated_at > ? THEN updated_at ELSE ? END"]
        guards = "".join(f" AND {g}" for g in self._guards)
        return Statement(
            f"UPDATE {table} SET {', '.join(sets)} WHERE {where}{guards} RETURNING *",
            (*self._set_params, now, now, *params, *self._guard_params),
            fetch=True,
            expect_rows=True,
        )
