"""The contract of the KV store (:mod:`openma.ports.kv`).

Needs the same fixture as the store contracts: ``store_backend``, an opened, migrated, empty
:class:`~openma.ports.backend.StoreBackend` whose ``kv(tenant_ref)`` returns the store under test::

    from openma.testing import KVContract

    class TestMyKV(KVContract):
        capabilities = {"concurrent_writers"}

        @pytest.fixture
        async def store_backend(self):
            ...

TTL tests use real time with short TTLs (tens of milliseconds), and assert the two sides separately (a
long TTL is still there, a short one is gone after it lapsed), so a slow machine cannot make them flaky.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from openma.errors import Conflict, InvalidInput, NotFound
from openma.ports.backend import StoreBackend
from openma.ports.kv import KVStore
from openma.testing.capabilities import requires
from openma.testing.stores import BAD_CURSORS, NASTY, _StoreContractBase

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
SHORT_TTL = 0.05


async def _lapse() -> None:
    await anyio.sleep(SHORT_TTL * 3)


async def _all_keys(kv: KVStore, prefix: str = "", limit: int = 100) -> list[str]:
    keys: list[str] = []
    cursor = None
    while True:
        page = await kv.list(prefix, cursor=cursor, limit=limit)
        keys += [e.key for e in page]
        cursor = page.next_cursor
        if cursor is None:
            return keys


@pytest.mark.anyio
class KVContract(_StoreContractBase):
    """KV: typed values, TTL, atomic incr, put_if_absent, compare_and_set, literal prefixes, keyset pages."""

    async def kv_of(self, backend: StoreBackend, name: str = "owner") -> KVStore:
        tenant = await backend.tenants.create(name=name)
        return backend.kv(self.ref(backend, tenant.id))

    async def test_put_get_round_trips_type_and_value(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        entry = await kv.put("config:model", "claude")
        assert entry.key == "config:model"
        assert entry.value == "claude"
        assert entry.expires_at is None
        assert entry.updated_at.tzinfo is not None
        got = await kv.get("config:model")
        assert got is not None
        assert got.value == "claude"
        await kv.put("n", 5)
        await kv.put("s", "5")
        n, s = await kv.get("n"), await kv.get("s")
        assert n is not None
        assert s is not None
        assert n.value == 5
        assert isinstance(n.value, int)
        assert s.value == "5"
        assert isinstance(s.value, str)
        await kv.put(NASTY, NASTY * 100)
        nasty = await kv.get(NASTY)
        assert nasty is not None
        assert nasty.value == NASTY * 100
        values: list[str | int] = ["", INT64_MAX, INT64_MIN, 0, "x" * (1 << 20)]
        for value in values:
            await kv.put("edge", value)
            edge = await kv.get("edge")
            assert edge is not None
            assert edge.value == value

    async def test_overwrite_and_missing(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        assert await kv.get("nope") is None
        await kv.put("k", "one")
        await kv.put("k", 2)
        got = await kv.get("k")
        assert got is not None
        assert got.value == 2

    @pytest.mark.parametrize(
        "key",
        ["", "a\x00b", "line\nbreak", "tab\there", "del\x7f", "c1\x85", "x" * 513, "é" * 257, "\ud800", 7, None, b"k"],
    )
    async def test_bad_keys(self, store_backend: StoreBackend, key: Any) -> None:
        kv = await self.kv_of(store_backend)
        with pytest.raises(InvalidInput):
            await kv.put(key, "v")
        with pytest.raises(InvalidInput):
            await kv.get(key)
        with pytest.raises(InvalidInput):
            await kv.incr(key)
        with pytest.raises(InvalidInput):
            await kv.delete(key)
        assert await _all_keys(kv) == []

    async def test_key_limits_are_in_bytes_and_unicode_is_fine(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        for key in ["x" * 512, "é" * 256, "日本語/キー", "🔑" * 128, "a b", "%_\\'\""]:
            await kv.put(key, key)
            got = await kv.get(key)
            assert got is not None
            assert got.value == key

    @pytest.mark.parametrize(
        "value", [None, True, 1.5, b"bytes", [1], {"a": 1}, "nul\x00", "x" * ((1 << 20) + 1), 1 << 63, INT64_MIN - 1]
    )
    async def test_bad_values_write_nothing(self, store_backend: StoreBackend, value: Any) -> None:
        kv = await self.kv_of(store_backend)
        with pytest.raises(InvalidInput):
            await kv.put("k", value)
        with pytest.raises(InvalidInput):
            await kv.put_if_absent("k", value)
        assert await kv.get("k") is None

    @pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "10", True, timedelta(seconds=-5), 10**12])
    async def test_bad_ttls(self, store_backend: StoreBackend, ttl: Any) -> None:
        kv = await self.kv_of(store_backend)
        with pytest.raises(InvalidInput):
            await kv.put("k", "v", ttl=ttl)
        with pytest.raises(InvalidInput):
            await kv.incr("k", ttl=ttl)
        assert await kv.get("k") is None

    async def test_delete_is_idempotent_and_says_what_it_did(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        await kv.put("k", "v")
        assert await kv.delete("k") is True
        assert await kv.get("k") is None
        assert await kv.delete("k") is False
        await kv.put("short", "v", ttl=SHORT_TTL)
        await _lapse()
        assert await kv.delete("short") is False

    async def test_ttl_expiry(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        before = datetime.now(UTC)
        long = await kv.put("long", "v", ttl=3600)
        assert long.expires_at is not None
        assert before + timedelta(seconds=3590) < long.expires_at < before + timedelta(seconds=3610)
        await kv.put("short", "v", ttl=SHORT_TTL)
        await kv.put("counter", 1, ttl=timedelta(milliseconds=50))
        await kv.put("forever", "v")
        await _lapse()
        assert await kv.get("short") is None
        assert await kv.get("counter") is None
        got = await kv.get("long")
        assert got is not None
        assert got.expires_at == long.expires_at
        assert await _all_keys(kv) == ["forever", "long"]
        assert await kv.sweep_expired() == 2
        assert await kv.sweep_expired() == 0
        assert await _all_keys(kv) == ["forever", "long"]

    async def test_put_resets_the_ttl(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        await kv.put("k", "v", ttl=SHORT_TTL)
        await kv.put("k", "v2")
        await _lapse()
        got = await kv.get("k")
        assert got is not None
        assert got.value == "v2"
        assert got.expires_at is None

    async def test_expired_entries_are_absent_for_conditions(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        await kv.put("lock", "old-owner", ttl=SHORT_TTL)
        await kv.put("text", "abc", ttl=SHORT_TTL)
        await kv.put("cas", "x", ttl=SHORT_TTL)
        await _lapse()
        assert await kv.put_if_absent("lock", "new-owner") is True
        lock = await kv.get("lock")
        assert lock is not None
        assert lock.value == "new-owner"
        assert lock.expires_at is None
        assert await kv.incr("text", 3) == 3  # an expired text value does not block a counter
        assert await kv.compare_and_set("cas", "x", "y") is False
        assert await kv.compare_and_set("cas", None, "z") is True

    async def test_incr(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        assert await kv.incr("c") == 1
        assert await kv.incr("c", 10) == 11
        assert await kv.incr("c", -20) == -9
        assert await kv.incr("c", 0) == -9
        got = await kv.get("c")
        assert got is not None
        assert got.value == -9
        await kv.put("p", 41)
        assert await kv.incr("p") == 42
        bad_steps: list[Any] = [True, 1.0, "1", None, 1 << 63]
        for bad in bad_steps:
            with pytest.raises(InvalidInput):
                await kv.incr("c", bad)

    async def test_incr_refuses_text_and_overflow_writing_nothing(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        await kv.put("t", "5")
        with pytest.raises(Conflict):
            await kv.incr("t")
        t = await kv.get("t")
        assert t is not None
        assert t.value == "5"
        await kv.put("big", INT64_MAX - 1)
        assert await kv.incr("big") == INT64_MAX
        with pytest.raises(Conflict):
            await kv.incr("big")
        await kv.put("small", INT64_MIN + 1)
        with pytest.raises(Conflict):
            await kv.incr("small", -2)
        big, small = await kv.get("big"), await kv.get("small")
        assert big is not None
        assert small is not None
        assert big.value == INT64_MAX
        assert small.value == INT64_MIN + 1

    async def test_incr_ttl_is_set_on_creation_and_kept(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        await kv.incr("quota", ttl=SHORT_TTL)
        assert await kv.incr("quota", ttl=3600) == 2  # the window the counter was opened with is kept
        await _lapse()
        assert await kv.get("quota") is None
        assert await kv.incr("quota", ttl=3600) == 1  # expired: starts again, with the new window
        got = await kv.get("quota")
        assert got is not None
        assert got.expires_at is not None

    async def test_put_if_absent(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        assert await kv.put_if_absent("k", "first") is True
        assert await kv.put_if_absent("k", "second") is False
        got = await kv.get("k")
        assert got is not None
        assert got.value == "first"

    async def test_compare_and_set(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        assert await kv.compare_and_set("k", None, "a") is True
        assert await kv.compare_and_set("k", None, "b") is False
        assert await kv.compare_and_set("k", "zzz", "b") is False
        assert await kv.compare_and_set("k", "a", "b", ttl=3600) is True
        got = await kv.get("k")
        assert got is not None
        assert got.value == "b"
        assert got.expires_at is not None
        assert await kv.compare_and_set("k", "b", 7) is True
        assert await kv.compare_and_set("k", "7", 8) is False  # types must match too
        assert await kv.compare_and_set("k", 7, 8) is True
        got = await kv.get("k")
        assert got is not None
        assert got.value == 8
        assert got.expires_at is None
        assert await kv.compare_and_set("missing", "x", "y") is False
        assert await kv.get("missing") is None

    @requires("concurrent_writers")
    async def test_concurrent_incr_is_exact(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        tasks, rounds = 20, 10
        seen: list[int] = []

        async def bump() -> None:
            for _ in range(rounds):
                seen.append(await kv.incr("hits"))

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(bump)
        got = await kv.get("hits")
        assert got is not None
        assert got.value == tasks * rounds
        assert sorted(seen) == list(range(1, tasks * rounds + 1))  # every increment saw its own total

    @requires("concurrent_writers")
    async def test_racing_put_if_absent_has_one_winner(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        for round_ in range(5):
            winners: list[int] = []

            async def contender(i: int, key: str = f"lock{round_}", out: list[int] = winners) -> None:
                if await kv.put_if_absent(key, f"owner-{i}"):
                    out.append(i)

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(contender, i)
            assert len(winners) == 1
            got = await kv.get(f"lock{round_}")
            assert got is not None
            assert got.value == f"owner-{winners[0]}"

    @requires("concurrent_writers")
    async def test_racing_compare_and_set_has_one_winner(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        await kv.put("state", "idle")
        winners: list[int] = []

        async def contender(i: int) -> None:
            if await kv.compare_and_set("state", "idle", f"taken-{i}"):
                winners.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(contender, i)
        assert len(winners) == 1
        got = await kv.get("state")
        assert got is not None
        assert got.value == f"taken-{winners[0]}"

    async def test_prefix_is_literal_and_case_sensitive(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        keys = ["100%", "100x", "a_b", "axb", "a\\b", "a\\\\b", "User:1", "user:2", "user", "ab", "日本/1"]
        for key in keys:
            await kv.put(key, "v")
        assert await _all_keys(kv, "100%") == ["100%"]
        assert await _all_keys(kv, "a_") == ["a_b"]
        assert await _all_keys(kv, "a\\") == ["a\\\\b", "a\\b"]
        assert await _all_keys(kv, "user") == ["user", "user:2"]
        assert await _all_keys(kv, "User") == ["User:1"]
        assert await _all_keys(kv, "日本") == ["日本/1"]
        assert await _all_keys(kv, "%") == []
        assert await _all_keys(kv, "zzz") == []
        assert await _all_keys(kv) == sorted(keys)

    async def test_list_orders_by_code_point(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        keys = ["b", "B", "a", "Z", "é", "e", "~", "😀", "ﬀ", "a/b", "a-b", "a.b", "aa"]
        for key in keys:
            await kv.put(key, "v")
        assert await _all_keys(kv, limit=4) == sorted(keys)

    async def test_pages_are_keyset_and_stable_under_writes(self, store_backend: StoreBackend) -> None:
        kv = await self.kv_of(store_backend)
        for i in range(10):
            await kv.put(f"k{i:02d}", i)
        first = await kv.list("k", limit=4)
        assert [e.key for e in first] == ["k00", "k01", "k02", "k03"]
        assert [e.value for e in first] == [0, 1, 2, 3]
        assert first.next_cursor is not None
        await kv.delete("k00")  # before the cursor: no shift
        await kv.delete("k04")  # the next one
        await kv.put("k035", "new")  # after the cursor: seen
        second = await kv.list("k", cursor=first.next_cursor, limit=4)
        assert [e.key for e in second] == ["k035", "k05", "k06", "k07"]
        third = await kv.list("k", cursor=second.next_cursor, limit=4)
        assert [e.key for e in third] == ["k08", "k09"]
        assert third.next_cursor is None
        exact = await kv.list("k0", limit=9)
        assert len(exact) == 9
        assert exact.next_cursor is None

    @pytest.mark.parametrize("cursor", BAD_CURSORS)
    async def test_malformed_cursor(self, store_backend: StoreBackend, cursor: str) -> None:
        kv = await self.kv_of(store_backend)
        with pytest.raises(InvalidInput):
            await kv.list(cursor=cursor)

    async def test_foreign_cursors_and_bad_limits(self, store_backend: StoreBackend) -> None:
        mine = await self.kv_of(store_backend, "a")
        theirs = await self.kv_of(store_backend, "b")
        for i in range(3):
            await mine.put(f"p/{i}", i)
            await theirs.put(f"p/{i}", i)
        cursor = (await mine.list("p/", limit=1)).next_cursor
        assert cursor is not None
        with pytest.raises(InvalidInput):
            await theirs.list("p/", cursor=cursor, limit=1)
        with pytest.raises(InvalidInput):
            await mine.list("p", cursor=cursor, limit=1)
        for limit in [0, -1, 1001, "5", 2.5, True, None]:
            with pytest.raises(InvalidInput):
                await mine.list(limit=limit)  # type: ignore[arg-type]
        for prefix in ["a\x00", 5, None]:
            with pytest.raises(InvalidInput):
                await mine.list(prefix)  # type: ignore[arg-type]

    async def test_tenant_isolation(self, store_backend: StoreBackend) -> None:
        mine = await self.kv_of(store_backend, "a")
        theirs = await self.kv_of(store_backend, "b")
        await mine.put("secret", "mine")
        await mine.put("short", "v", ttl=SHORT_TTL)
        await theirs.put("short", "v", ttl=SHORT_TTL)
        assert await theirs.get("secret") is None
        assert await theirs.delete("secret") is False
        assert await theirs.compare_and_set("secret", "mine", "pwned") is False
        assert await theirs.put_if_absent("secret", "theirs") is True
        assert await theirs.incr("n") == 1
        assert await mine.incr("n") == 1
        await _lapse()
        assert await theirs.sweep_expired() == 1
        assert await mine.sweep_expired() == 1
        got = await mine.get("secret")
        assert got is not None
        assert got.value == "mine"
        assert await _all_keys(mine) == ["n", "secret"]

    async def test_unknown_tenant_cannot_write(self, store_backend: StoreBackend) -> None:
        ghost = store_backend.kv(self.ref(store_backend, "tnt_01h0000000000000000000000z"))
        with pytest.raises(NotFound):
            await ghost.put("k", "v")
        with pytest.raises(NotFound):
            await ghost.incr("k")
        assert await ghost.get("k") is None
