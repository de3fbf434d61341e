"""The contract of the agents store (see :mod:`openma.testing.stores` for the ``store_backend`` fixture).

An adapter author combines :class:`AgentStoreContract` with one async fixture, ``store_backend``, that
yields an opened and migrated :class:`~openma.ports.backend.StoreBackend` (fresh and empty for each test)::

    from openma.testing import AgentStoreContract

    class TestMyAgents(AgentStoreContract):
        capabilities = {"transactions", "concurrent_writers"}
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from openma.errors import Conflict, InvalidInput, NotFound, VersionConflict
from openma.models import Agent, Tenant
from openma.ports.backend import StoreBackend
from openma.testing.capabilities import requires
from openma.testing.stores import BAD_CURSORS, BAD_LIMITS, NASTY, _forge_cursor, _StoreContractBase


@pytest.mark.anyio
class AgentStoreContract(_StoreContractBase):
    """Agents: CRUD, keyset lists with filters, optimistic concurrency, history, tenant isolation."""

    async def agents_of(self, backend: StoreBackend, tenant: Tenant | None = None) -> Any:
        tenant = tenant or await backend.tenants.create(name="owner")
        return backend.agents(self.ref(backend, tenant.id))

    async def test_create_and_get(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a: Agent = await agents.create(
            name="coder",
            model="claude-sonnet-4-6",
            system="be brief",
            tools=[{"type": "agent_toolset_20260401"}],
            metadata={"team": "x"},
        )
        assert a.id.startswith("agt_")
        assert a.version == 1
        assert a.archived_at is None
        assert a.created_at == a.updated_at
        assert a.created_at.tzinfo is not None
        assert await agents.get(a.id) == a
        assert (await agents.get_version(a.id, 1)).snapshot["system"] == "be brief"

    async def test_model_object_and_unicode(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name=NASTY, model={"id": "claude-opus", "speed": "fast"}, system=NASTY * 10)
        got = await agents.get(a.id)
        assert got.name == NASTY
        assert got.system == NASTY * 10
        assert got.model == {"id": "claude-opus", "speed": "fast"}
        assert got.model_id == "claude-opus"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"name": "", "model": "m"},
            {"name": "ok", "model": ""},
            {"name": "ok", "model": {"speed": "fast"}},
            {"name": "ok", "model": 3},
            {"name": "ok", "model": "m", "tools": "not-a-list"},
            {"name": "ok", "model": "m", "tools": [1, 2]},
            {"name": "ok", "model": "m", "system": "x" * 200_001},
            {"name": "ok", "model": "m", "metadata": {"k": object()}},
            {"name": "a\x00b", "model": "m"},
        ],
    )
    async def test_bad_input_writes_nothing(self, store_backend: StoreBackend, kwargs: dict[str, Any]) -> None:
        agents = await self.agents_of(store_backend)
        with pytest.raises(InvalidInput):
            await agents.create(**kwargs)
        assert len(await agents.list(include_archived=True)) == 0

    async def test_unknown_tenant_cannot_own_agents(self, store_backend: StoreBackend) -> None:
        ghost = store_backend.agents(self.ref(store_backend, "tnt_01h0000000000000000000000z"))
        with pytest.raises(NotFound):
            await ghost.create(name="orphan", model="m")

    async def test_get_missing_and_malformed(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        with pytest.raises(NotFound):
            await agents.get("agt_01h0000000000000000000000z")
        for bad in ["nope", "env_01h0000000000000000000000z", "agt_../../etc/passwd", ""]:
            with pytest.raises(InvalidInput):
                await agents.get(bad)

    async def test_list_pagination_and_order(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        made = [await agents.create(name=f"a{i}", model="m") for i in range(8)]
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await agents.list(limit=3, cursor=cursor)
            pages += 1
            seen += [a.id for a in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == 3
        assert seen == [a.id for a in reversed(made)]
        page = await agents.list(limit=8, order="asc")
        assert [a.id for a in page] == [a.id for a in made]
        assert page.next_cursor is None

    async def test_list_filters(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="Alpha Coder", model="m1")
        b = await agents.create(name="beta_reviewer", model="m2")
        c = await agents.create(name="100% sure", model="m1")
        await agents.archive(c.id)

        def ids(page: Any) -> set[str]:
            return {x.id for x in page}

        assert ids(await agents.list(q="CODER")) == {a.id}
        assert ids(await agents.list(q="_")) == {b.id}
        assert ids(await agents.list(q="%")) == set()
        assert ids(await agents.list(q="%", include_archived=True)) == {c.id}
        assert ids(await agents.list(model="m1")) == {a.id}
        assert ids(await agents.list(include_archived=True)) == {a.id, b.id, c.id}
        future = datetime.now(UTC) + timedelta(days=1)
        assert ids(await agents.list(created_after=future)) == set()
        assert ids(await agents.list(created_before=future)) == {a.id, b.id}
        with pytest.raises(InvalidInput):
            await agents.list(created_after=datetime(2020, 1, 1))  # naive
        with pytest.raises(InvalidInput):
            await agents.list(q="")

    @requires("unicode_casefold_search")
    async def test_search_is_case_insensitive_beyond_ascii(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="ÉCOLE Straße", model="m")
        assert [x.id for x in await agents.list(q="école")] == [a.id]
        assert [x.id for x in await agents.list(q="STRASSE")] == [a.id]

    @pytest.mark.parametrize("cursor", BAD_CURSORS)
    async def test_malformed_cursor(self, store_backend: StoreBackend, cursor: str) -> None:
        agents = await self.agents_of(store_backend)
        with pytest.raises(InvalidInput):
            await agents.list(cursor=cursor)

    async def test_foreign_cursors_are_refused(self, store_backend: StoreBackend) -> None:
        ta, tb = await self.two_tenants(store_backend)
        a_agents = store_backend.agents(self.ref(store_backend, ta.id))
        b_agents = store_backend.agents(self.ref(store_backend, tb.id))
        for i in range(3):
            await a_agents.create(name=f"a{i}", model="m")
            await b_agents.create(name=f"b{i}", model="m")
        cursor = (await a_agents.list(limit=1)).next_cursor
        assert cursor is not None
        with pytest.raises(InvalidInput):  # another tenant
            await b_agents.list(limit=1, cursor=cursor)
        with pytest.raises(InvalidInput):  # another filter
            await a_agents.list(limit=1, cursor=cursor, model="m")
        with pytest.raises(InvalidInput):  # another order
            await a_agents.list(limit=1, cursor=cursor, order="asc")
        with pytest.raises(InvalidInput):  # another kind of list
            await store_backend.environments(self.ref(store_backend, ta.id)).list(cursor=cursor)
        with pytest.raises(InvalidInput):  # tampered
            await a_agents.list(limit=1, cursor=_forge_cursor(cursor, t="soon"))
        # the genuine cursor still works
        assert len(await a_agents.list(limit=1, cursor=cursor)) == 1

    @pytest.mark.parametrize("limit", BAD_LIMITS)
    async def test_bad_limit(self, store_backend: StoreBackend, limit: Any) -> None:
        agents = await self.agents_of(store_backend)
        with pytest.raises(InvalidInput):
            await agents.list(limit=limit)

    async def test_update_bumps_version_and_writes_history(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="coder", model="m", metadata={"keep": 1, "drop": 2})
        b = await agents.update(a.id, system="new", metadata={"drop": None, "add": 3})
        assert b.version == 2
        assert b.system == "new"
        assert b.metadata == {"keep": 1, "add": 3}
        assert b.updated_at >= a.updated_at
        assert await agents.get(a.id) == b
        versions = await agents.versions(a.id)
        assert [v.version for v in versions] == [2, 1]
        assert (await agents.get_version(a.id, 1)).snapshot["system"] == ""
        assert (await agents.get_version(a.id, 2)).snapshot["system"] == "new"
        with pytest.raises(NotFound):
            await agents.get_version(a.id, 3)

    async def test_noop_update_keeps_version(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="coder", model="m", system="s")
        same = await agents.update(a.id, system="s", name="coder")
        assert same.version == 1
        assert [v.version for v in await agents.versions(a.id)] == [1]

    async def test_stale_expected_version_is_refused_and_writes_nothing(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="coder", model="m")
        await agents.update(a.id, expected_version=1, system="v2")
        with pytest.raises(VersionConflict) as info:
            await agents.update(a.id, expected_version=1, system="lost update")
        assert info.value.expected == 1
        assert info.value.actual == 2
        assert info.value.code == "version_conflict"
        now = await agents.get(a.id)
        assert now.version == 2
        assert now.system == "v2"
        assert [v.version for v in await agents.versions(a.id)] == [2, 1]

    @requires("concurrent_writers")
    async def test_racing_updates_with_one_expected_version_exactly_one_wins(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="coder", model="m")
        wins: list[int] = []
        losses: list[int] = []

        async def contender(i: int) -> None:
            try:
                await agents.update(a.id, expected_version=1, system=f"writer {i}")
                wins.append(i)
            except VersionConflict:
                losses.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(contender, i)
        assert len(wins) == 1
        assert len(losses) == 5
        final = await agents.get(a.id)
        assert final.version == 2
        assert final.system == f"writer {wins[0]}"
        assert [v.version for v in await agents.versions(a.id)] == [2, 1]

    @requires("concurrent_writers")
    async def test_racing_updates_without_expected_version_all_apply(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="coder", model="m")

        async def writer(i: int) -> None:
            await agents.update(a.id, metadata={f"k{i}": i})

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(writer, i)
        final = await agents.get(a.id)
        assert final.version == 5
        assert final.metadata == {f"k{i}": i for i in range(4)}
        assert len(await agents.versions(a.id)) == 5

    async def test_bad_updates_write_nothing(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="coder", model="m")
        bad_changes: list[dict[str, Any]] = [
            {"nonsense": 1},
            {"name": ""},
            {"tools": "x"},
            {"model": 5},
            {"version": 9},
            {"id": "agt_x"},
            {"metadata": [1]},
        ]
        for changes in bad_changes:
            with pytest.raises(InvalidInput):
                await agents.update(a.id, **changes)
        for bad_version in [0, -1, "1", True]:
            with pytest.raises(InvalidInput):
                await agents.update(a.id, expected_version=bad_version, system="x")
        assert await agents.get(a.id) == a

    async def test_archive_then_update_is_conflict(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="coder", model="m")
        archived = await agents.archive(a.id)
        assert archived.archived_at is not None
        assert (await agents.archive(a.id)).archived_at == archived.archived_at
        with pytest.raises(Conflict):
            await agents.update(a.id, system="x")
        assert [x.id for x in await agents.list()] == []

    async def test_delete_removes_history(self, store_backend: StoreBackend) -> None:
        agents = await self.agents_of(store_backend)
        a = await agents.create(name="coder", model="m")
        await agents.update(a.id, system="v2")
        await agents.delete(a.id)
        with pytest.raises(NotFound):
            await agents.get(a.id)
        with pytest.raises(NotFound):
            await agents.get_version(a.id, 1)
        with pytest.raises(NotFound):
            await agents.delete(a.id)

    async def test_tenant_isolation(self, store_backend: StoreBackend) -> None:
        ta, tb = await self.two_tenants(store_backend)
        mine = store_backend.agents(self.ref(store_backend, ta.id))
        theirs = store_backend.agents(self.ref(store_backend, tb.id))
        a = await mine.create(name="secret", model="m")
        with pytest.raises(NotFound):
            await theirs.get(a.id)
        assert len(await theirs.list(include_archived=True)) == 0
        assert len(await theirs.list(q="secret")) == 0
        with pytest.raises(NotFound):
            await theirs.update(a.id, system="pwned")
        with pytest.raises(NotFound):
            await theirs.update(a.id, expected_version=1, system="pwned")
        with pytest.raises(NotFound):
            await theirs.archive(a.id)
        with pytest.raises(NotFound):
            await theirs.delete(a.id)
        with pytest.raises(NotFound):
            await theirs.versions(a.id)
        with pytest.raises(NotFound):
            await theirs.get_version(a.id, 1)
        assert await mine.get(a.id) == a
