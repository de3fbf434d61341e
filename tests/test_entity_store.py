"""The entity-store base, through a tiny example store whose table the test creates on each engine.

``Widgets`` states only its table, model and rules (the shape docs/architecture.md teaches), so what is
tested here is the base itself: get, the keyset list with its filters, search and cursor scope, archive,
delete with dependents, the partial update and its metadata merge, and the name-uniqueness rule.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import attrs
import pytest

from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.entity import Filter, ListOptions, TenantBoundStore
from openma.core import validate
from openma.core.jsonutil import dumps, loads
from openma.errors import Conflict, InvalidInput, NotFound
from openma.ports.sql import Row, Statement
from openma.ports.tenancy import TenantRef

pytestmark = pytest.mark.anyio

TABLES = [
    """CREATE TABLE widgets (
        tenant_id   TEXT   NOT NULL,
        id          TEXT   NOT NULL,
        name        TEXT   NOT NULL,
        name_search TEXT   NOT NULL,
        color       TEXT   NOT NULL,
        metadata    TEXT   NOT NULL,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL,
        archived_at BIGINT,
        PRIMARY KEY (tenant_id, id)
    )""",
    "CREATE INDEX widgets_created_idx ON widgets (tenant_id, created_at, id)",
    "CREATE UNIQUE INDEX widgets_active_name_idx ON widgets (tenant_id, name) WHERE archived_at IS NULL",
    "CREATE TABLE widget_parts (tenant_id TEXT NOT NULL, widget_id TEXT NOT NULL, part TEXT NOT NULL)",
]


@attrs.frozen
class Widget:
    id: str
    tenant_id: str
    name: str
    color: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None


def _color(value: Any) -> str:
    return validate.text(value, "color", max_len=20, min_len=1)


class Widgets(TenantBoundStore[Widget]):
    table = "widgets"
    prefix = "wdg"
    noun = "widget"
    fields = {"name": validate.name, "color": _color}
    filters = {"color": Filter("color", _color)}
    unique_names = True
    dependents = {"widget_parts": "widget_id"}

    def from_row(self, row: Row) -> Widget:
        return Widget(**self._common(row), color=row["color"], metadata=loads(row["metadata"]))

    async def create(self, *, name: str, color: str = "red", metadata: dict[str, Any] | None = None) -> Widget:
        values = {"name": validate.name(name), "color": _color(color), "metadata": dumps(validate.metadata(metadata))}
        widget_id, _ = await self._create(
            values,
            also=lambda new_id, now: [
                Statement("INSERT INTO widget_parts VALUES (?, ?, ?)", (self.tenant_id, new_id, "bolt"))
            ],
        )
        return await self.get(widget_id)

    async def update(self, widget_id: str, **changes: Any) -> Widget:
        return await self._update(widget_id, changes)


@pytest.fixture
async def backend(store_backend: SqlStoreBackend) -> SqlStoreBackend:
    """A fresh backend with the example store's tables (created here: no migration ships them)."""
    for sql in TABLES:
        await store_backend.client.execute(sql)
    return store_backend


async def _widgets(backend: SqlStoreBackend, tenant_id: str | None = None) -> Widgets:
    """A ``Widgets`` store of ``tenant_id`` (a new tenant if not given)."""
    if tenant_id is None:
        tenant_id = (await backend.tenants.create(name="widget-maker")).id

    async def check() -> None:
        if (await backend.tenants.get(tenant_id)).archived_at is not None:
            raise Conflict("archived tenant")

    return Widgets(backend.client, TenantRef(tenant_id, check), backend.clock)


async def _parts(backend: SqlStoreBackend, widget_id: str) -> list[str]:
    rows = await backend.client.fetch_all("SELECT part FROM widget_parts WHERE widget_id = ?", (widget_id,))
    return [r["part"] for r in rows]


async def test_create_get_and_the_common_fields(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    w = await widgets.create(name="Sprocket", color="blue", metadata={"k": "v"})
    assert w.id.startswith("wdg_")
    assert (w.tenant_id, w.name, w.color, w.metadata) == (widgets.tenant_id, "Sprocket", "blue", {"k": "v"})
    assert w.created_at == w.updated_at and w.archived_at is None
    assert await widgets.get(w.id) == w
    assert await _parts(backend, w.id) == ["bolt"]  # ``also`` ran in the same write unit
    assert repr(widgets) == f"Widgets(tenant_id={widgets.tenant_id!r})"


async def test_get_missing_and_malformed(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    with pytest.raises(NotFound) as info:
        await widgets.get("wdg_01h0000000000000000000000z")
    assert info.value.details == {"widget_id": "wdg_01h0000000000000000000000z"}
    for bad in ("agt_01h0000000000000000000000z", "wdg_x", 7):
        with pytest.raises(InvalidInput) as bad_info:
            await widgets.get(bad)  # type: ignore[arg-type]
        assert bad_info.value.details["field"] == "widget_id"


async def test_rows_of_another_tenant_are_not_there(backend: SqlStoreBackend) -> None:
    mine = await _widgets(backend)
    theirs = await _widgets(backend, (await backend.tenants.create(name="other")).id)
    w = await mine.create(name="a")
    assert (await theirs.list()).items == []
    for call in (theirs.get, theirs.archive, theirs.delete):
        with pytest.raises(NotFound):
            await call(w.id)
    with pytest.raises(NotFound):
        await theirs.update(w.id, color="green")
    assert await mine.get(w.id) == w


async def test_an_unknown_or_archived_tenant_cannot_own_rows(backend: SqlStoreBackend) -> None:
    with pytest.raises(NotFound):
        await (await _widgets(backend, "tnt_01h0000000000000000000000z")).create(name="orphan")
    tenant = await backend.tenants.create(name="gone")
    await backend.tenants.archive(tenant.id)
    with pytest.raises(Conflict):
        await (await _widgets(backend, tenant.id)).create(name="orphan")


async def test_list_pages_in_both_orders_without_gaps(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    made = [await widgets.create(name=f"w{i}") for i in range(7)]
    for order, expected in (("asc", made), ("desc", made[::-1])):
        seen: list[Widget] = []
        cursor = None
        while True:
            page = await widgets.list(limit=3, cursor=cursor, order=order)  # type: ignore[arg-type]
            seen += page.items
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert [w.id for w in seen] == [w.id for w in expected]
    assert ListOptions().limit == 50 and ListOptions().order == "desc"


async def test_filters_search_and_time_bounds(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    red = await widgets.create(name="Ünïcode Gear", color="red")
    blue = await widgets.create(name="100% cog_x", color="blue")
    assert [w.id for w in (await widgets.list(color="blue")).items] == [blue.id]
    assert [w.id for w in (await widgets.list(color=None)).items] == [blue.id, red.id]
    assert [w.id for w in (await widgets.list(q="gear")).items] == [red.id]
    assert [w.id for w in (await widgets.list(q="0%")).items] == [blue.id]  # LIKE metacharacters are literal
    assert (await widgets.list(q="_")).items == [blue] and (await widgets.list(q="%x")).items == []
    future = datetime.now(UTC) + timedelta(days=1)
    assert (await widgets.list(created_after=future)).items == []
    assert len((await widgets.list(created_before=future)).items) == 2
    with pytest.raises(InvalidInput):
        await widgets.list(color="")
    with pytest.raises(TypeError, match="unexpected keyword argument 'shape'"):
        await widgets.list(shape="round")


async def test_a_cursor_is_refused_by_any_other_list(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    for i in range(3):
        await widgets.create(name=f"w{i}", color="red")
    cursor = (await widgets.list(limit=1, color="red")).next_cursor
    assert cursor is not None
    assert len((await widgets.list(limit=1, color="red", cursor=cursor)).items) == 1
    other_tenant = await _widgets(backend, (await backend.tenants.create(name="b")).id)
    agents = backend.agents(TenantRef(widgets.tenant_id))
    for foreign in (
        widgets.list(limit=1, cursor=cursor),
        widgets.list(limit=1, color="blue", cursor=cursor),
        widgets.list(limit=1, color="red", cursor=cursor, order="asc"),
        widgets.list(limit=1, color="red", cursor=cursor, include_archived=True),
        other_tenant.list(limit=1, color="red", cursor=cursor),
        agents.list(limit=1, cursor=cursor),
    ):
        with pytest.raises(InvalidInput) as info:
            await foreign
        assert info.value.details["field"] == "cursor"


async def test_archive_is_idempotent_hides_and_refuses_updates(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    w = await widgets.create(name="a")
    first = await widgets.archive(w.id)
    assert first.archived_at is not None
    again = await widgets.archive(w.id)
    assert again.archived_at == first.archived_at
    assert (await widgets.list()).items == []
    assert (await widgets.list(include_archived=True)).items == [again]
    with pytest.raises(Conflict) as info:
        await widgets.update(w.id, color="green")
    assert info.value.details == {"widget_id": w.id}
    with pytest.raises(NotFound):
        await widgets.archive("wdg_01h0000000000000000000000z")


async def test_delete_takes_the_dependents_along(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    keep, drop = await widgets.create(name="keep"), await widgets.create(name="drop")
    await widgets.delete(drop.id)
    assert await _parts(backend, drop.id) == []
    assert await _parts(backend, keep.id) == ["bolt"]
    with pytest.raises(NotFound):
        await widgets.get(drop.id)
    with pytest.raises(NotFound):
        await widgets.delete(drop.id)


async def test_update_writes_only_what_it_names(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    w = await widgets.create(name="a", metadata={"keep": 1, "drop": 2})
    assert await widgets.update(w.id) == w  # nothing named, nothing written
    assert await widgets.update(w.id, color="red", metadata={}) == w
    u = await widgets.update(w.id, name="Renamed", metadata={"drop": None, "new": [1]})
    assert (u.name, u.color, u.metadata) == ("Renamed", "red", {"keep": 1, "new": [1]})
    assert u.updated_at >= w.updated_at and u.created_at == w.created_at
    assert [x.id for x in (await widgets.list(q="renamed")).items] == [w.id]  # name_search follows the name
    with pytest.raises(InvalidInput, match="updatable: name, color, metadata") as info:
        await widgets.update(w.id, shape="round")
    assert info.value.details["field"] == "shape"
    for bad in ({"color": ""}, {"color": "x" * 21}, {"metadata": ["x"]}, {"name": ""}):
        with pytest.raises(InvalidInput):
            await widgets.update(w.id, **bad)
    assert await widgets.get(w.id) == u


async def test_racing_updates_of_different_fields_both_apply(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    w = await widgets.create(name="a")
    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(lambda i=i: widgets.update(w.id, metadata={f"k{i}": i}))
        tg.start_soon(lambda: widgets.update(w.id, color="green"))
    got = await widgets.get(w.id)
    assert got.color == "green"
    assert got.metadata == {f"k{i}": i for i in range(6)}


async def test_names_are_unique_among_active_rows(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    a = await widgets.create(name="same")
    with pytest.raises(Conflict, match="already exists") as info:
        await widgets.create(name="same")
    assert info.value.details == {"name": "same"}
    b = await widgets.create(name="other")
    with pytest.raises(Conflict, match="already exists"):
        await widgets.update(b.id, name="same")
    assert (await widgets.update(a.id, name="same", color="blue")).color == "blue"  # its own name is free
    await widgets.archive(a.id)
    assert (await widgets.update(b.id, name="same")).name == "same"  # archiving frees the name
    elsewhere = await _widgets(backend, (await backend.tenants.create(name="b")).id)
    assert (await elsewhere.create(name="same")).name == "same"  # per tenant


async def test_racing_creates_of_one_name_make_one_row(backend: SqlStoreBackend) -> None:
    widgets = await _widgets(backend)
    outcomes: list[str] = []

    async def create() -> None:
        try:
            await widgets.create(name="contested")
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(create)
    assert sorted(outcomes) == ["conflict"] * 5 + ["created"]
    assert len((await widgets.list(q="contested")).items) == 1
