"""The base of the SQL entity stores: a store states its table, its model and its rules; the rest is here.

An *entity* is a row with an ``id`` minted from a prefix (``agt_...``), a ``created_at`` in ms that orders
it, and an ``archived_at`` that soft-deletes it. A store subclass states:

* ``table``, ``prefix`` (of its ids) and ``noun`` (``"agent"``: errors say ``agent agt_... not found`` and
  carry ``agent_id=``);
* :meth:`SqlEntityStore.from_row`, the row → model mapping;
* its rules as class options: ``searchable`` (a ``name_search`` column behind ``list(q=)``), ``touches``
  (an ``updated_at`` column), ``filters`` (``list`` keywords matched on a column), ``fields`` (what
  ``update`` accepts, each with its check), ``unique_names`` (a name is used by one active row of a
  tenant), ``dependents`` (child tables deleted with a row).

:class:`SqlEntityStore` is the table-level logic (get, keyset list, archive, insert); tenants use it as is.
:class:`TenantBoundStore` adds what the per-tenant stores share: rows bound to one tenant that must exist
and be active before a write, the public ``list`` with its filters and search, ``delete``, and a partial
``update`` that writes only the named columns and merges a metadata patch in the statement itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

import attrs

from openma.adapters.sql.archive import archive_row
from openma.adapters.sql.listing import created_between, list_page
from openma.adapters.sql.partial import PartialUpdate
from openma.core import validate
from openma.core.clock import Clock, SystemClock, ms_to_datetime
from openma.core.ids import check_id, new_id
from openma.core.jsonutil import dumps
from openma.core.pagination import DEFAULT_LIMIT
from openma.errors import Conflict, InvalidInput, NotFound
from openma.models import Order, Page
from openma.ports.sql import BatchResult, Row, SqlClient, SqlExecutor, Statement
from openma.ports.tenancy import TenantRef

M = TypeVar("M")

#: How often a partial update is recomputed when the row changed between its read and its write.
UPDATE_RETRIES = 5


@attrs.frozen
class ListOptions:
    """What every entity list takes, unchecked (:meth:`SqlEntityStore._page` checks it)."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    order: Order = "desc"
    include_archived: bool = False
    #: Case-insensitive substring of the name (stores with ``searchable``).
    q: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@attrs.frozen
class Filter:
    """A ``list`` keyword: rows whose ``column`` equals the value ``check`` returns (``None`` = no filter)."""

    column: str
    check: Callable[[Any], Any]


def optional_text(what: str, *, max_len: int) -> Callable[[Any], str]:
    """A field check for free text where ``None`` means ``""``."""
    return lambda value: validate.text("" if value is None else value, what, max_len=max_len)


def optional_time(ms: int | None) -> datetime | None:
    """A nullable ms column (``archived_at``) as a datetime."""
    return None if ms is None else ms_to_datetime(ms)


class SqlEntityStore(Generic[M]):
    """Get, list, archive and insert rows of one entity table, optionally bound to an owner (a tenant)."""

    table: ClassVar[str]
    prefix: ClassVar[str]
    noun: ClassVar[str]
    #: The table has a ``name_search`` column (:func:`~openma.core.validate.search_key` of ``name``).
    searchable: ClassVar[bool] = True
    #: The table has an ``updated_at`` column, set on insert and by every write.
    touches: ClassVar[bool] = True
    #: ``list`` keywords beyond the common ones.
    filters: ClassVar[Mapping[str, Filter]] = {}

    def __init__(self, client: SqlClient, clock: Clock | None = None) -> None:
        self._db = client
        self._clock = clock or SystemClock()
        #: Columns (and values) that every row of this store has: ``{"tenant_id": ...}`` for a tenant's store.
        self._owner: dict[str, str] = {}

    def from_row(self, row: Row) -> M:
        """The model of a stored row."""
        raise NotImplementedError

    def _common(self, row: Row) -> dict[str, Any]:
        """The model fields every entity row has: id, owner, name and times (``updated_at`` if it touches)."""
        fields: dict[str, Any] = {"id": row["id"], **{c: row[c] for c in self._owner}, "name": row["name"]}
        fields["created_at"] = ms_to_datetime(row["created_at"])
        if self.touches:
            fields["updated_at"] = ms_to_datetime(row["updated_at"])
        fields["archived_at"] = optional_time(row["archived_at"])
        return fields

    @property
    def _id_field(self) -> str:
        return f"{self.noun}_id"

    def _not_found(self, entity_id: str) -> NotFound:
        return NotFound(f"{self.noun} {entity_id} not found", **{self._id_field: entity_id})

    def _key(self, entity_id: str) -> tuple[str, tuple[str, ...]]:
        """``WHERE`` text and parameters that select one row of this store."""
        columns = [*self._owner, "id"]
        return " AND ".join(f"{c} = ?" for c in columns), (*self._owner.values(), entity_id)

    async def _ensure_owner(self) -> None:
        """Refuse a write whose owner is missing or archived (nothing to check without an owner)."""

    async def _row(self, entity_id: str, db: SqlExecutor | None = None) -> Row:
        """The row of ``entity_id`` (through ``db``, a transaction, if given); ``NotFound`` if there is none."""
        check_id(entity_id, self.prefix, what=self._id_field)
        where, params = self._key(entity_id)
        row = await (db or self._db).fetch_one(f"SELECT * FROM {self.table} WHERE {where}", params)
        if row is None:
            raise self._not_found(entity_id)
        return row

    async def get(self, entity_id: str) -> M:
        return self.from_row(await self._row(entity_id))

    async def _mint(self) -> tuple[str, int]:
        """Check the owner, then a new id and the creation time (ms) of a row about to be inserted."""
        await self._ensure_owner()
        now = self._clock.now_ms()
        return new_id(self.prefix, now_ms=now), now

    def _insert(
        self, entity_id: str, now: int, values: Mapping[str, Any], *, unless: tuple[str, Sequence[Any]] | None = None
    ) -> Statement:
        """``INSERT`` of a new active row: owner, id, ``values`` (with ``name_search`` derived) and times.

        ``unless`` is a query (and its parameters) that, when it finds a row, makes the insert write nothing
        and abort its write unit.
        """
        row: dict[str, Any] = {**self._owner, "id": entity_id, **values}
        if self.searchable:
            row["name_search"] = validate.search_key(values["name"])
        row["created_at"] = now
        if self.touches:
            row["updated_at"] = now
        head = f"INSERT INTO {self.table} ({', '.join(row)}, archived_at)"
        marks = ", ".join("?" for _ in row)
        if unless is None:
            return Statement(f"{head} VALUES ({marks}, NULL)", tuple(row.values()))
        sql = f"{head} SELECT {marks}, NULL WHERE NOT EXISTS ({unless[0]})"
        return Statement(sql, (*row.values(), *unless[1]), expect_rows=True)

    async def _page(self, options: ListOptions, filters: Mapping[str, Any]) -> Page[M]:
        """One page of this store's rows: active ones unless asked, matching ``q`` and ``filters``."""
        include_archived = validate.flag(options.include_archived, "include_archived")
        where = [f"{c} = ?" for c in self._owner] or ["1 = 1"]
        params: list[Any] = [*self._owner.values()]
        if not include_archived:
            where.append("archived_at IS NULL")
        if options.q is not None:
            where.append("name_search LIKE ? ESCAPE '\\'")
            params.append(validate.like_pattern(options.q))
        chosen: dict[str, Any] = {}
        for keyword, value in filters.items():
            if keyword not in self.filters:
                raise TypeError(f"{type(self).__name__}.list() got an unexpected keyword argument {keyword!r}")
            if value is not None:
                chosen[keyword] = self.filters[keyword].check(value)
                where.append(f"{self.filters[keyword].column} = ?")
                params.append(chosen[keyword])
        after, before = created_between(where, params, options.created_after, options.created_before)
        return await list_page(
            self._db,
            table=self.table,
            where=where,
            params=params,
            scope=(self._owner, include_archived, options.q, chosen, after, before),
            cursor=options.cursor,
            order=options.order,
            limit=options.limit,
            to_model=self.from_row,
        )

    async def archive(self, entity_id: str) -> M:
        """Soft-delete: set ``archived_at`` once (idempotent, the first time is kept) and return the row."""
        check_id(entity_id, self.prefix, what=self._id_field)
        row = await archive_row(
            self._db,
            self.table,
            tenant_id=self._owner.get("tenant_id"),
            row_id=entity_id,
            now=self._clock.now_ms(),
            touch=self.touches,
        )
        if row is None:
            raise self._not_found(entity_id)
        return self.from_row(row)


class TenantBoundStore(SqlEntityStore[M]):
    """An entity store bound to one tenant: every row has a ``tenant_id``, and writes need an active tenant.

    Class options beyond :class:`SqlEntityStore`'s: ``fields`` maps each updatable field but ``metadata``
    to its check (``metadata`` is always updatable: a patch merged key by key, ``None`` removes a key);
    ``unique_names`` refuses (``Conflict``) a name that an active row of the tenant already has;
    ``dependents`` maps child tables to their column that holds this store's id, deleted with the row.
    """

    fields: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    unique_names: ClassVar[bool] = False
    dependents: ClassVar[Mapping[str, str]] = {}

    def __init__(self, client: SqlClient, tenant: TenantRef, clock: Clock | None = None) -> None:
        super().__init__(client, clock)
        self._tenant = tenant
        self.tenant_id = tenant.tenant_id
        self._owner = {"tenant_id": tenant.tenant_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tenant_id={self.tenant_id!r})"

    async def _ensure_owner(self) -> None:
        await self._tenant.ensure()

    async def list(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        order: Order = "desc",
        include_archived: bool = False,
        q: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        **filters: Any,
    ) -> Page[M]:
        """A keyset page, newest first by default; ``filters`` are the store's :attr:`filters` keywords."""
        options = ListOptions(limit, cursor, order, include_archived, q, created_after, created_before)
        return await self._page(options, filters)

    async def delete(self, entity_id: str) -> None:
        """Remove the row and its dependents' rows for good; ``NotFound`` if there is no such row."""
        check_id(entity_id, self.prefix, what=self._id_field)
        where, params = self._key(entity_id)
        statements = [Statement(f"DELETE FROM {self.table} WHERE {where}", params, expect_rows=True)]
        for table, column in self.dependents.items():
            statements.append(Statement(f"DELETE FROM {table} WHERE tenant_id = ? AND {column} = ?", params))
        if not (await self._db.run_batch(statements)).committed:
            raise self._not_found(entity_id)

    def _changes(self, changes: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Checked ``changes`` (``metadata`` left out) and the metadata patch, or ``InvalidInput``."""
        updatable = (*self.fields, "metadata")
        for field in changes:
            if field not in updatable:
                raise InvalidInput(
                    f"{self.table}.update got unknown field {field!r}; updatable: {', '.join(updatable)}",
                    field=field,
                )
        checked = {field: self.fields[field](value) for field, value in changes.items() if field != "metadata"}
        patch = changes.get("metadata")
        if "metadata" in changes and not isinstance(patch, dict):
            raise InvalidInput("metadata must be an object", field="metadata")
        return checked, patch

    def _archived(self, entity_id: str) -> Conflict:
        return Conflict(f"{self.noun} {entity_id} is archived and cannot be updated", **{self._id_field: entity_id})

    def _name_clash(self, name: str, entity_id: str = "") -> tuple[str, tuple[str, ...]]:
        """A query for another active row of the tenant named ``name``, and its parameters."""
        sql = f"SELECT 1 FROM {self.table} WHERE tenant_id = ? AND name = ? AND archived_at IS NULL AND id <> ?"
        return sql, (self.tenant_id, name, entity_id)

    async def _refuse_taken(self, name: str, entity_id: str = "") -> None:
        """``Conflict`` when ``unique_names`` is set and another active row of the tenant is named ``name``."""
        if self.unique_names and await self._db.fetch_one(*self._name_clash(name, entity_id)) is not None:
            raise self._taken(name)

    def _taken(self, name: str) -> Conflict:
        return Conflict(f"a {self.noun} named {name!r} already exists", name=name)

    async def _write(self, statements: Sequence[Statement], name: str | None) -> BatchResult:
        """Run a write unit; with ``unique_names``, a unique violation (a unique index on the active names
        lost a race to another writer) is the ``Conflict`` of a name taken."""
        try:
            return await self._db.run_batch(statements)
        except Exception as exc:
            if self.unique_names and name is not None and self._db.dialect.is_unique_violation(exc):
                raise self._taken(name) from None
            raise

    async def _create(
        self, values: Mapping[str, Any], *, also: Callable[[str, int], Sequence[Statement]] | None = None
    ) -> tuple[str, int]:
        """Insert a row of checked ``values``; return its new id and creation time (ms).

        ``also(id, now)`` gives statements written in the same write unit (a first history row, say).
        """
        await self._refuse_taken(values["name"])
        entity_id, now = await self._mint()
        unless = self._name_clash(values["name"]) if self.unique_names else None  # checked again as it writes
        statements = [self._insert(entity_id, now, values, unless=unless), *(also(entity_id, now) if also else ())]
        if not (await self._write(statements, values["name"])).committed:
            raise self._taken(values["name"])
        return entity_id, now

    def _column_values(self, field: str, value: Any) -> dict[str, Any]:
        """The columns a checked field is written to: JSON values as text, ``name`` with its search key."""
        if field == "name" and self.searchable:
            return {"name": value, "name_search": validate.search_key(value)}
        return {field: dumps(value) if isinstance(value, (dict, list)) else value}

    async def _update(self, entity_id: str, changes: Mapping[str, Any]) -> M:
        """Apply ``changes`` (see :meth:`_changes`) in one ``UPDATE`` that writes only the named columns.

        The metadata patch is merged into the stored value by that statement, so a concurrent update of
        another field (or of other metadata keys) is never reverted. An update that changes nothing returns
        the row as read, without a write; an archived row is a ``Conflict``.
        """
        checked, patch = self._changes(changes)
        await self._ensure_owner()
        for _ in range(UPDATE_RETRIES):
            row = await self._row(entity_id)
            current = self.from_row(row)
            if row["archived_at"] is not None:
                raise self._archived(entity_id)
            # Validates the patch and the merged size against the current row (clear errors before writing).
            old_meta = getattr(current, "metadata", {})
            meta = validate.merge_metadata(old_meta, patch) if patch is not None else old_meta
            if meta == old_meta and all(getattr(current, f) == v for f, v in checked.items()):
                return current
            update = PartialUpdate(self._db.dialect)
            for field, value in checked.items():
                for column, column_value in self._column_values(field, value).items():
                    update.set(column, column_value)
            if patch:
                update.merge("metadata", patch, read=(row["metadata"], meta))
            if self.unique_names and "name" in checked:
                await self._refuse_taken(checked["name"], entity_id)
                clash, clash_params = self._name_clash(checked["name"], entity_id)
                update.guard(f"NOT EXISTS ({clash})", clash_params)
            where, params = self._key(entity_id)
            statement = update.statement(self.table, f"{where} AND archived_at IS NULL", params, self._clock.now_ms())
            result = await self._write([statement], checked.get("name"))
            if result.committed:
                return self.from_row(result.rows[0][0])
            # Deleted, archived, renamed into a clash, or the merged metadata would now be over its limits.
        raise Conflict(f"{self.noun} {entity_id} kept changing under this update; retry", **{self._id_field: entity_id})
