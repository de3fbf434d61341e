"""Contracts for the tenants and environments stores, and what every store contract shares.

An adapter author combines these mixins with one async fixture, ``store_backend``, that yields an opened
and migrated :class:`~openma.ports.backend.StoreBackend` (fresh and empty for each test)::

    import pytest
    from openma.testing import AgentStoreContract

    class TestMyAgents(AgentStoreContract):
        capabilities = {"transactions", "concurrent_writers"}

        @pytest.fixture
        async def store_backend(self):
            backend = await open_my_backend()
            await backend.migrate()
            yield backend
            await backend.aclose()

The contracts run on anyio (``pytest.mark.anyio``); the ``anyio_backend`` fixture picks asyncio or trio.
To run them on both, parametrize it (``@pytest.fixture(params=["asyncio", "trio"])``) and declare ``trio``;
an adapter that does not declare ``trio`` has its trio runs skipped with the reason.

The agents store's contract is in :mod:`openma.testing.agents`.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar

import anyio
import pytest

from openma.errors import Conflict, InvalidInput, NotFound
from openma.models import Environment, Tenant
from openma.ports.backend import StoreBackend
from openma.ports.tenancy import TenantRef
from openma.testing.capabilities import check_requirements, requires

#: Text that breaks naive SQL, LIKE patterns, JSON and encodings.
NASTY = "Robert'); DROP TABLE agents;-- % _ \\ \" ` ; ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 مرحبا 日本語"  # noqa: RUF001


class _StoreContractBase:
    capabilities: ClassVar[set[str] | frozenset[str]] = frozenset()

    @pytest.fixture(autouse=True)
    def _openma_requirements(self, request: pytest.FixtureRequest) -> None:
        check_requirements(self, request)

    @staticmethod
    def ref(backend: StoreBackend, tenant_id: str) -> TenantRef:
        async def check() -> None:
            tenant = await backend.tenants.get(tenant_id)
            if tenant.archived_at is not None:
                raise Conflict(f"tenant {tenant_id} is archived")

        return TenantRef(tenant_id, check)

    async def two_tenants(self, backend: StoreBackend) -> tuple[Tenant, Tenant]:
        a = await backend.tenants.create(name="tenant-a")
        b = await backend.tenants.create(name="tenant-b")
        return a, b


def _forge_cursor(cursor: str, **changes: Any) -> str:
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw.update(changes)
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


BAD_CURSORS = ["", "not-a-cursor", "!!!", base64.urlsafe_b64encode(b"[1,2]").decode(), "e30", "x" * 600]
BAD_LIMITS: list[Any] = [0, -1, 100_000, "5", 2.5, True, None]


@pytest.mark.anyio
class TenantStoreContract(_StoreContractBase):
    """Tenants: create, get, list (keyset), archive."""

    async def test_create_and_get(self, store_backend: StoreBackend) -> None:
        t = await store_backend.tenants.create(name="acme", metadata={"plan": "pro"})
        assert t.id.startswith("tnt_")
        assert t.created_at.tzinfo is not None
        got = await store_backend.tenants.get(t.id)
        assert got == t

    async def test_unicode_and_metacharacters_round_trip(self, store_backend: StoreBackend) -> None:
        t = await store_backend.tenants.create(name=NASTY, metadata={NASTY: [NASTY]})
        got = await store_backend.tenants.get(t.id)
        assert got.name == NASTY
        assert got.metadata == {NASTY: [NASTY]}

    @pytest.mark.parametrize("name", ["", "   ", "x" * 201, "nul\x00byte", 42, None])
    async def test_bad_names(self, store_backend: StoreBackend, name: Any) -> None:
        with pytest.raises(InvalidInput):
            await store_backend.tenants.create(name=name)
        assert len(await store_backend.tenants.list()) == 0

    async def test_bad_metadata(self, store_backend: StoreBackend) -> None:
        for bad in [[1], {"k": {1, 2}}, {"k": float("nan")}, {"k": "x" * 20_000}, {1: "int key"}]:
            with pytest.raises(InvalidInput):
                await store_backend.tenants.create(name="x", metadata=bad)  # type: ignore[arg-type]
        assert len(await store_backend.tenants.list()) == 0

    async def test_get_missing_and_malformed(self, store_backend: StoreBackend) -> None:
        with pytest.raises(NotFound):
            await store_backend.tenants.get("tnt_01h0000000000000000000000z")
        for bad in ["", "acme", "agt_01h0000000000000000000000z", "tnt_' OR 1=1 --", 7]:
            with pytest.raises(InvalidInput):
                await store_backend.tenants.get(bad)  # type: ignore[arg-type]

    async def test_list_pages_in_order_without_gaps(self, store_backend: StoreBackend) -> None:
        made = [await store_backend.tenants.create(name=f"t{i}") for i in range(7)]
        seen: list[str] = []
        cursor = None
        while True:
            page = await store_backend.tenants.list(limit=3, cursor=cursor)
            seen += [t.id for t in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == [t.id for t in reversed(made)]
        asc = await store_backend.tenants.list(limit=100, order="asc")
        assert [t.id for t in asc] == [t.id for t in made]

    async def test_archive_hides_and_is_idempotent(self, store_backend: StoreBackend) -> None:
        t = await store_backend.tenants.create(name="gone")
        first = await store_backend.tenants.archive(t.id)
        assert first.archived_at is not None
        again = await store_backend.tenants.archive(t.id)
        assert again.archived_at == first.archived_at
        assert t.id not in [x.id for x in await store_backend.tenants.list()]
        assert t.id in [x.id for x in await store_backend.tenants.list(include_archived=True)]
        with pytest.raises(NotFound):
            await store_backend.tenants.archive("tnt_01h0000000000000000000000z")

    @pytest.mark.parametrize("cursor", BAD_CURSORS)
    async def test_bad_cursor(self, store_backend: StoreBackend, cursor: str) -> None:
        with pytest.raises(InvalidInput):
            await store_backend.tenants.list(cursor=cursor)

    @pytest.mark.parametrize("limit", BAD_LIMITS)
    async def test_bad_limit(self, store_backend: StoreBackend, limit: Any) -> None:
        with pytest.raises(InvalidInput):
            await store_backend.tenants.list(limit=limit)


@pytest.mark.anyio
class EnvironmentStoreContract(_StoreContractBase):
    """Environments: CRUD, keyset lists, metadata merge, tenant isolation."""

    async def envs_of(self, backend: StoreBackend) -> Any:
        tenant = await backend.tenants.create(name="owner")
        return backend.environments(self.ref(backend, tenant.id))

    async def test_create_get_update(self, store_backend: StoreBackend) -> None:
        envs = await self.envs_of(store_backend)
        e: Environment = await envs.create(name="py", config={"packages": {"pip": ["x"]}}, metadata={"a": 1})
        assert e.id.startswith("env_")
        assert await envs.get(e.id) == e
        u = await envs.update(e.id, config={"packages": {}}, metadata={"a": None, "b": NASTY}, description=NASTY)
        assert u.config == {"packages": {}}
        assert u.metadata == {"b": NASTY}
        assert u.description == NASTY
        assert await envs.get(e.id) == u
        assert await envs.update(e.id, name="py") == u  # no-op

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"name": ""},
            {"name": "x", "config": [1]},
            {"name": "x", "config": {"k": "v" * 300_000}},
            {"name": "x", "description": 5},
        ],
    )
    async def test_bad_input_writes_nothing(self, store_backend: StoreBackend, kwargs: dict[str, Any]) -> None:
        envs = await self.envs_of(store_backend)
        with pytest.raises(InvalidInput):
            await envs.create(**kwargs)
        assert len(await envs.list(include_archived=True)) == 0

    async def test_bad_update(self, store_backend: StoreBackend) -> None:
        envs = await self.envs_of(store_backend)
        e = await envs.create(name="py")
        bad_changes: list[dict[str, Any]] = [{"nonsense": 1}, {"name": ""}, {"config": "x"}]
        for changes in bad_changes:
            with pytest.raises(InvalidInput):
                await envs.update(e.id, **changes)
        assert await envs.get(e.id) == e

    async def test_list_archive_delete(self, store_backend: StoreBackend) -> None:
        envs = await self.envs_of(store_backend)
        made = [await envs.create(name=f"Env {i}") for i in range(5)]
        page1 = await envs.list(limit=2)
        page2 = await envs.list(limit=2, cursor=page1.next_cursor)
        page3 = await envs.list(limit=2, cursor=page2.next_cursor)
        assert [e.id for e in [*page1, *page2, *page3]] == [e.id for e in reversed(made)]
        assert page3.next_cursor is None
        assert [e.id for e in await envs.list(q="env 3")] == [made[3].id]
        await envs.archive(made[0].id)
        with pytest.raises(Conflict):
            await envs.update(made[0].id, name="x")
        assert made[0].id not in [e.id for e in await envs.list()]
        await envs.delete(made[1].id)
        with pytest.raises(NotFound):
            await envs.get(made[1].id)
        with pytest.raises(NotFound):
            await envs.delete(made[1].id)

    @pytest.mark.parametrize("cursor", BAD_CURSORS)
    async def test_malformed_cursor(self, store_backend: StoreBackend, cursor: str) -> None:
        envs = await self.envs_of(store_backend)
        with pytest.raises(InvalidInput):
            await envs.list(cursor=cursor)

    @requires("concurrent_writers")
    async def test_racing_updates_are_not_lost(self, store_backend: StoreBackend) -> None:
        envs = await self.envs_of(store_backend)
        e = await envs.create(name="py")

        async def writer(i: int) -> None:
            await envs.update(e.id, metadata={f"k{i}": i})

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(writer, i)
        assert (await envs.get(e.id)).metadata == {f"k{i}": i for i in range(4)}

    async def test_tenant_isolation(self, store_backend: StoreBackend) -> None:
        ta, tb = await self.two_tenants(store_backend)
        mine = store_backend.environments(self.ref(store_backend, ta.id))
        theirs = store_backend.environments(self.ref(store_backend, tb.id))
        e = await mine.create(name="private")
        with pytest.raises(NotFound):
            await theirs.get(e.id)
        assert len(await theirs.list(include_archived=True)) == 0
        with pytest.raises(NotFound):
            await theirs.update(e.id, name="pwned")
        with pytest.raises(NotFound):
            await theirs.archive(e.id)
        with pytest.raises(NotFound):
            await theirs.delete(e.id)
        assert await mine.get(e.id) == e


def __getattr__(name: str) -> Any:
    # AgentStoreContract moved to openma.testing.agents; this module still answers for it.
    if name == "AgentStoreContract":
        from openma.testing.agents import AgentStoreContract

        return AgentStoreContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
