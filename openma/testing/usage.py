"""The contract of the usage ledger (:mod:`openma.ports.usage`).

Needs the same fixture as the store contracts: ``store_backend``, an opened, migrated, empty
:class:`~openma.ports.backend.StoreBackend` whose ``usage(tenant_ref)`` returns the ledger under test::

    from openma.testing import UsageContract

    class TestMyUsage(UsageContract):
        capabilities = {"concurrent_writers"}

        @pytest.fixture
        async def store_backend(self):
            ...
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import attrs
import pytest

from openma.core.ids import new_id
from openma.errors import InvalidInput
from openma.ports.backend import StoreBackend
from openma.ports.usage import UsageSlice, UsageStore
from openma.testing.capabilities import requires
from openma.testing.stores import BAD_CURSORS, BAD_LIMITS, NASTY, _StoreContractBase

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SESSION = new_id("ses")
OTHER_SESSION = new_id("ses")


def tokens(
    key: str, *, model: str = "claude", at: datetime = T0, session_id: str = SESSION, **counts: int
) -> UsageSlice:
    """A model slice (input 10 / output 5 unless given)."""
    amounts = {"input_tokens": 10, "output_tokens": 5, **counts}
    return UsageSlice(key=key, session_id=session_id, kind="model", at=at, name=model, **amounts)


def seconds(key: str, ms: int, *, kind: str = "sandbox", at: datetime = T0, session_id: str = SESSION) -> UsageSlice:
    return UsageSlice(key=key, session_id=session_id, kind=kind, at=at, name="local", duration_ms=ms)  # type: ignore[arg-type]


async def exported_keys(store: UsageStore, *, limit: int = 100, consumer: str = "default") -> list[str]:
    """Every key the export yields from ``consumer``'s acknowledgement to the end (not acknowledging)."""
    keys: list[str] = []
    cursor = None
    while True:
        page = await store.export(cursor=cursor, limit=limit, consumer=consumer)
        keys += [item.slice.key for item in page.items]
        cursor = page.cursor
        if not page.has_more:
            return keys


@pytest.mark.anyio
class UsageContract(_StoreContractBase):
    """Usage: idempotent slices, summaries over windows and sessions, an export cursor with acks."""

    async def usage_of(self, backend: StoreBackend, name: str = "owner") -> UsageStore:
        tenant = await backend.tenants.create(name=name)
        return backend.usage(self.ref(backend, tenant.id))

    async def test_record_sums_per_kind_and_model(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        new = await usage.record(
            [
                tokens("a", input_tokens=100, output_tokens=20, cache_read_tokens=7, cache_write_tokens=3),
                tokens("b", input_tokens=1, output_tokens=2),
                tokens("c", model="gpt"),
                seconds("s1", 1500),
                seconds("e1", 250, kind="exec"),
                seconds("t1", 4000, kind="session"),
            ]
        )
        assert new == 6
        summary = await usage.summary()
        claude = summary.of("model", "claude")
        assert (claude.slices, claude.input_tokens, claude.output_tokens) == (2, 101, 22)
        assert (claude.cache_read_tokens, claude.cache_write_tokens, claude.total_tokens) == (7, 3, 133)
        assert summary.of("model").input_tokens == 111
        assert summary.of("sandbox").seconds == 1.5
        assert summary.of("exec").duration_ms == 250
        assert summary.of("session").seconds == 4.0
        assert [(t.kind, t.name) for t in summary.totals] == sorted((t.kind, t.name) for t in summary.totals)

    async def test_a_retried_or_repeated_write_never_counts_twice(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        batch = [tokens("k1"), tokens("k2"), seconds("s", 1000)]
        assert await usage.record(batch) == 3
        assert await usage.record(batch) == 0
        assert await usage.record([tokens("k2"), tokens("k3")]) == 1
        assert await usage.record([tokens("k4"), tokens("k4", input_tokens=999)]) == 1  # first of a key wins
        summary = await usage.summary()
        assert summary.of("model").slices == 4
        assert summary.of("model").input_tokens == 40
        assert summary.of("sandbox").duration_ms == 1000
        assert await usage.record([]) == 0

    async def test_summary_window_and_session(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        hour = timedelta(hours=1)
        await usage.record(
            [
                tokens("early", at=T0),
                tokens("mid", at=T0 + hour),
                tokens("late", at=T0 + 2 * hour),
                tokens("other", at=T0 + hour, session_id=OTHER_SESSION),
            ]
        )
        assert (await usage.summary(since=T0 + hour)).of("model").slices == 3
        assert (await usage.summary(until=T0 + hour)).of("model").slices == 1  # until is exclusive
        assert (await usage.summary(since=T0 + hour, until=T0 + 2 * hour)).of("model").slices == 2
        only = await usage.summary(session_id=OTHER_SESSION)
        assert only.of("model").slices == 1
        assert only.session_id == OTHER_SESSION
        assert (await usage.summary(since=T0 + 3 * hour)).totals == []

    @pytest.mark.parametrize(
        "change",
        [
            {"kind": "tokens"},
            {"input_tokens": -1},
            {"input_tokens": True},
            {"output_tokens": 2.5},
            {"duration_ms": 2**41},
            {"key": ""},
            {"key": "a\x00b"},
            {"key": "x" * 300},
            {"name": "\ud800"},
            {"session_id": ""},
            {"session_id": "agt_01JAAAAAAAAAAAAAAAAAAAAAAA"},
            {"at": datetime(2026, 1, 1)},
            {"at": "2026-01-01"},
        ],
    )
    async def test_bad_slices_are_refused_and_write_nothing(
        self, store_backend: StoreBackend, change: dict[str, Any]
    ) -> None:
        usage = await self.usage_of(store_backend)
        bad = attrs.evolve(tokens("bad"), **change)
        with pytest.raises(InvalidInput):
            await usage.record([tokens("good"), bad])
        assert (await usage.summary()).totals == []

    @pytest.mark.parametrize("value", [None, "slices", b"x", 5, [{"key": "k"}], ["k"]])
    async def test_not_slices_are_refused(self, store_backend: StoreBackend, value: Any) -> None:
        usage = await self.usage_of(store_backend)
        with pytest.raises(InvalidInput):
            await usage.record(value)

    async def test_bad_summary_arguments(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        for kwargs in (
            {"since": datetime(2026, 1, 1)},
            {"until": "yesterday"},
            {"session_id": "agt_01JAAAAAAAAAAAAAAAAAAAAAAA"},
            {"session_id": NASTY},
        ):
            with pytest.raises(InvalidInput):
                await usage.summary(**kwargs)

    async def test_export_pages_in_recording_order_and_resumes_after_ack(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        first = [tokens(f"k{i:02d}") for i in range(5)]
        await usage.record(first)
        await usage.record([tokens("k00"), tokens("k05")])  # one duplicate, one new
        page = await usage.export(limit=4)
        assert [i.slice.key for i in page.items] == ["k00", "k01", "k02", "k03"]
        assert page.has_more
        assert page.items[0].recorded_at.tzinfo is not None
        rest = await usage.export(cursor=page.cursor, limit=4)
        assert [i.slice.key for i in rest.items] == ["k04", "k05"]
        assert not rest.has_more
        # Not acknowledged: the export starts over (at least once).
        assert await exported_keys(usage) == [f"k{i:02d}" for i in range(6)]
        await usage.ack(page.cursor)
        assert await exported_keys(usage) == ["k04", "k05"]
        await usage.ack(rest.cursor)
        empty = await usage.export()
        assert empty.items == [] and not empty.has_more
        await usage.record([tokens("k06")])
        assert [i.slice.key for i in (await usage.export(cursor=empty.cursor)).items] == ["k06"]
        await usage.ack(page.cursor)  # older: acknowledgements never move back
        assert await exported_keys(usage) == ["k06"]

    async def test_consumers_acknowledge_separately(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        await usage.record([tokens("a"), tokens("b")])
        page = await usage.export(limit=1, consumer="billing")
        await usage.ack(page.cursor, consumer="billing")
        assert await exported_keys(usage, consumer="billing") == ["b"]
        assert await exported_keys(usage, consumer="audit") == ["a", "b"]

    async def test_bad_export_arguments(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        other = await self.usage_of(store_backend, "other")
        await usage.record([tokens("a")])
        foreign = (await other.export()).cursor
        for cursor in [*BAD_CURSORS, foreign]:
            with pytest.raises(InvalidInput):
                await usage.export(cursor=cursor)
            with pytest.raises(InvalidInput):
                await usage.ack(cursor)
        for limit in BAD_LIMITS:
            with pytest.raises(InvalidInput):
                await usage.export(limit=limit)
        for consumer in ["", "a\x00", "\udc80", 5, None]:
            with pytest.raises(InvalidInput):
                await usage.export(consumer=consumer)  # type: ignore[arg-type]

    async def test_ack_past_the_end_is_refused(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        other = await self.usage_of(store_backend, "other")
        await other.record([tokens(f"k{i}") for i in range(5)])
        await usage.record([tokens("a")])
        ahead = (await other.export()).cursor  # another tenant's cursor, further along
        with pytest.raises(InvalidInput):
            await usage.ack(ahead)

    async def test_tenants_are_isolated(self, store_backend: StoreBackend) -> None:
        a = await self.usage_of(store_backend, "a")
        b = await self.usage_of(store_backend, "b")
        await a.record([tokens("same-key", input_tokens=1)])
        assert await b.record([tokens("same-key", input_tokens=2)]) == 1  # keys are per tenant
        assert (await a.summary()).of("model").input_tokens == 1
        assert (await b.summary()).of("model").input_tokens == 2
        assert await exported_keys(b) == ["same-key"]

    @requires("concurrent_writers")
    async def test_concurrent_retried_writes_count_once_and_export_each_once(self, store_backend: StoreBackend) -> None:
        usage = await self.usage_of(store_backend)
        keys = [f"k{i:03d}" for i in range(60)]

        async def writer(offset: int) -> None:
            for start in range(0, len(keys), 7):
                chunk = keys[(start + offset) % len(keys) :][:7]
                await usage.record([tokens(k, input_tokens=1) for k in chunk])

        async with anyio.create_task_group() as tg:
            for offset in range(4):
                tg.start_soon(writer, offset * 5)
        await usage.record([tokens(k, input_tokens=1) for k in keys[:50]])
        await usage.record([tokens(k, input_tokens=1) for k in keys[50:]])
        assert (await usage.summary()).of("model").input_tokens == len(keys)
        exported = await exported_keys(usage, limit=9)
        assert sorted(exported) == keys
