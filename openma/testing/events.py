"""The contract of the sessions store and its event log (:mod:`openma.ports.sessions`).

Combine ``EventLogContract`` with the ``store_backend`` fixture of the store contracts (a fresh, migrated
backend per test); the contract asks it for ``backend.sessions(tenant, blobs=..., settings=...)``. Spilled
events go to a ``file://`` blob store in the test's temporary directory unless you override the
``event_blobs`` fixture (a function from tenant id to that tenant's *internal* blob view, which accepts the
keys of openma's area ``.openma/...``, as ``FsspecBlobStore.for_tenant(tenant_id, internal=True)`` does)::

    import pytest
    from openma.testing import EventLogContract

    class TestMyEventLog(EventLogContract):
        capabilities = {"transactions", "concurrent_writers"}

        @pytest.fixture
        async def store_backend(self):
            backend = await open_my_backend()
            await backend.migrate()
            yield backend
            await backend.aclose()

``concurrent_writers`` turns on the races: 50 appenders on one session, two appenders of one id, two
promoters of one input. Waits are bounded (``anyio.fail_after``) so a broken wake-up fails instead of
hanging; nothing asserts how fast anything is.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import attrs
import pytest

from openma.core import events as ev
from openma.core.jsonutil import MAX_JSON_DEPTH
from openma.core.tail import subscribe, wait_pending
from openma.errors import (
    Conflict,
    InvalidInput,
    LeaseLost,
    NotFound,
    ResyncRequired,
    SpillIntegrityError,
    StorageUnavailable,
)
from openma.models import Event, Session, Tenant
from openma.ports.backend import StoreBackend
from openma.ports.blobs import BlobStore
from openma.ports.sessions import SessionStore
from openma.settings import Settings
from openma.testing.capabilities import requires
from openma.testing.stores import BAD_CURSORS, NASTY, _StoreContractBase

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"
MISSING_SESSION = "ses_01h0000000000000000000000z"
#: Waits in this contract end after this many seconds (a hang is a failure, not a slow pass).
WAIT = 20.0

BlobsFor = Callable[[str], BlobStore]


@attrs.define
class LogEnv:
    """One tenant's sessions store and blob store, as the contract's tests use them."""

    backend: StoreBackend
    tenant: Tenant
    store: SessionStore
    blobs: BlobStore

    async def session(self, **kwargs: Any) -> Session:
        return await self.store.create(
            agent_id=kwargs.pop("agent_id", AGENT),
            environment_id=kwargs.pop("environment_id", ENVIRONMENT),
            agent_snapshot=kwargs.pop("agent_snapshot", {"id": AGENT, "name": "coder", "version": 1}),
            environment_snapshot=kwargs.pop("environment_snapshot", {"id": ENVIRONMENT, "config": {}}),
            **kwargs,
        )

    async def blob_keys(self, session_id: str) -> list[str]:
        page = await self.blobs.list(ev.session_blob_prefix(session_id), limit=1000)
        return [b.key for b in page.items]

    async def all_events(self, session_id: str, after: int = 0) -> list[Event]:
        out: list[Event] = []
        cursor = None
        while True:
            page = await self.store.events(session_id, after=after, limit=1000, cursor=cursor)
            out += page.items
            cursor = page.next_cursor
            if cursor is None:
                return out


def _forge_cursor_seq(seq: int) -> str:
    """A well-formed cursor whose position is absurd (the scope check would refuse it anyway)."""
    raw = json.dumps({"v": 1, "s": "0" * 16, "t": seq, "i": "x"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _msg(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}], **extra}


class _FailingPuts:
    """A blob store whose ``put`` fails (the storage is down); everything else goes to the real store."""

    def __init__(self, inner: BlobStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put(self, key: str, data: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("blob store unreachable (injected by the contract)")


@pytest.mark.anyio
class EventLogContract(_StoreContractBase):
    """Sessions, their event log, spill, inbox, streams, live tail and retention."""

    #: The spill threshold the contract runs with (small, so spilling needs no megabyte payloads).
    spill_bytes: ClassVar[int] = 4096

    @pytest.fixture
    async def event_blobs(self, tmp_path: Path) -> AsyncIterator[BlobsFor]:
        from openma.adapters.fsspec_blobs import FsspecBlobStore

        root = await FsspecBlobStore.open(f"file://{tmp_path}/event-blobs")
        try:
            yield lambda tenant_id: root.for_tenant(tenant_id, internal=True)
        finally:
            await root.aclose()

    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        return Settings(event_spill_bytes=self.spill_bytes, sqlite_poll_interval=0.05)

    @pytest.fixture
    async def env(self, store_backend: StoreBackend, event_blobs: BlobsFor, settings: Settings) -> LogEnv:
        return await self.env_for(store_backend, event_blobs, settings)

    async def env_for(self, backend: StoreBackend, blobs_for: BlobsFor, settings: Settings, name: str = "t") -> LogEnv:
        tenant = await backend.tenants.create(name=name)
        blobs = blobs_for(tenant.id)
        store = backend.sessions(self.ref(backend, tenant.id), blobs=blobs, settings=settings)
        return LogEnv(backend, tenant, store, blobs)

    # ------------------------------------------------------------------ sessions

    async def test_create_get_and_snapshots(self, env: LogEnv) -> None:
        s = await env.session(title=NASTY, metadata={"k": NASTY}, agent_snapshot={"id": AGENT, "system": NASTY})
        assert s.id.startswith("ses_") and s.status == "idle" and s.last_seq == 0 and s.first_seq == 1
        got = await env.store.get(s.id)
        assert got == s
        assert got.agent == {"id": AGENT, "system": NASTY} and got.title == NASTY and got.metadata == {"k": NASTY}

    async def test_list_filters_and_pages(self, env: LogEnv) -> None:
        other_agent = "agt_01h0000000000000000000001z"
        made = [await env.session(agent_id=AGENT if i % 2 else other_agent) for i in range(5)]
        seen: list[str] = []
        cursor = None
        while True:
            page = await env.store.list(limit=2, cursor=cursor, order="asc")
            seen += [s.id for s in page]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [s.id for s in made]
        by_agent = await env.store.list(agent_id=other_agent, limit=50)
        assert sorted(s.id for s in by_agent) == sorted(s.id for s in made[0::2])
        assert len(await env.store.list(status="running")) == 0
        with pytest.raises(InvalidInput):
            await env.store.list(status="sleeping")
        first = await env.store.list(limit=2)
        assert first.next_cursor is not None
        with pytest.raises(InvalidInput):
            await env.store.list(limit=2, cursor=first.next_cursor, agent_id=AGENT)
        for bad in BAD_CURSORS:
            with pytest.raises(InvalidInput):
                await env.store.list(cursor=bad)

    async def test_update_archive_and_delete(self, env: LogEnv) -> None:
        s = await env.session(title="a", metadata={"keep": 1, "drop": 2})
        u = await env.store.update(s.id, title="b", metadata={"drop": None, "new": "x"})
        assert u.title == "b" and u.metadata == {"keep": 1, "new": "x"}
        assert (await env.store.update(s.id, title=None)).title is None
        archived = await env.store.archive(s.id)
        assert archived.archived_at is not None
        assert s.id not in [x.id for x in await env.store.list()]
        assert s.id in [x.id for x in await env.store.list(include_archived=True)]
        with pytest.raises(Conflict):
            await env.store.post(s.id, [_msg("too late")])
        await env.store.delete(s.id)
        with pytest.raises(NotFound):
            await env.store.get(s.id)
        with pytest.raises(NotFound):
            await env.store.delete(s.id)

    async def test_delete_removes_events_inbox_streams_and_blobs(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.append(s.id, [_msg("x" * (self.spill_bytes * 2)), _msg("small")])
        await env.store.post(s.id, [_msg("queued", id="q1"), _msg("y" * (self.spill_bytes * 2), id="q2")])
        stream = await env.store.open_stream(s.id)
        await env.store.append_stream(s.id, stream.id, ["partial"])
        assert len(await env.blob_keys(s.id)) == 2
        await env.store.delete(s.id)
        assert await env.blob_keys(s.id) == []
        for call in (
            env.store.events(s.id),
            env.store.append(s.id, [_msg("x")]),
            env.store.post(s.id, [_msg("x")]),
            env.store.pending(s.id),
            env.store.get_stream(s.id, stream.id),
            env.store.streams(s.id),
        ):
            with pytest.raises(NotFound):
                await call

    async def test_tenants_cannot_see_each_other(
        self, store_backend: StoreBackend, event_blobs: BlobsFor, settings: Settings
    ) -> None:
        a = await self.env_for(store_backend, event_blobs, settings, "a")
        b = await self.env_for(store_backend, event_blobs, settings, "b")
        s = await a.session()
        [e] = await a.store.append(s.id, [_msg("secret", id="same-id")])
        for call in (
            b.store.get(s.id),
            b.store.events(s.id),
            b.store.get_event(s.id, e.id),
            b.store.append(s.id, [_msg("intrusion")]),
            b.store.post(s.id, [_msg("intrusion")]),
            b.store.pending(s.id),
            b.store.promote(s.id, ["same-id"]),
            b.store.cancel(s.id),
            b.store.open_stream(s.id),
            b.store.prune(s.id, keep_last=0),
            b.store.archive(s.id),
            b.store.update(s.id, title="mine"),
            b.store.delete(s.id),
            b.store.set_status(s.id, "running"),
        ):
            with pytest.raises(NotFound):
                await call
        with pytest.raises(NotFound):
            await subscribe(b.store, s.id).next(timeout=WAIT)
        assert len(await b.store.list()) == 0
        report = await b.store.gc(datetime.now(UTC) + timedelta(days=1))
        assert report.events == 0
        assert [x.seq for x in await a.all_events(s.id)] == [1]

    async def test_unknown_tenant_cannot_create(self, store_backend: StoreBackend, event_blobs: BlobsFor) -> None:
        ghost = "tnt_01h0000000000000000000000z"
        store = store_backend.sessions(self.ref(store_backend, ghost), blobs=event_blobs(ghost))
        with pytest.raises(NotFound):
            await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"agent_id": "nope"},
            {"environment_id": "agt_01h0000000000000000000000z"},
            {"agent_snapshot": [1]},
            {"environment_snapshot": {"k": float("nan")}},
            {"title": "x" * 501},
            {"title": 5},
            {"metadata": {"k": {1}}},
        ],
    )
    async def test_bad_session_input(self, env: LogEnv, kwargs: dict[str, Any]) -> None:
        with pytest.raises(InvalidInput):
            await env.session(**kwargs)
        assert len(await env.store.list(include_archived=True)) == 0

    # ------------------------------------------------------------------ append and read

    async def test_append_mints_gapless_seqs_and_ids(self, env: LogEnv) -> None:
        s = await env.session()
        first = await env.store.append(s.id, [_msg("a"), {"type": "agent.message", "content": []}])
        second = await env.store.append(s.id, [{"type": "custom.unknown_type", "x": 1}])
        events = first + second
        assert [e.seq for e in events] == [1, 2, 3]
        assert all(e.id.startswith("evt_") and e.data["id"] == e.id for e in events)
        assert events[0].data == {**_msg("a"), "id": events[0].id}
        assert events[0].created_at.tzinfo is not None
        assert await env.all_events(s.id) == events
        assert (await env.store.get(s.id)).last_seq == 3
        assert await env.store.get_event(s.id, events[1].id) == events[1]
        with pytest.raises(NotFound):
            await env.store.get_event(s.id, "evt-missing")
        assert await env.store.append(s.id, []) == []

    async def test_append_is_idempotent_by_event_id(self, env: LogEnv) -> None:
        s = await env.session()
        batch = [_msg("one", id="toolu_01A"), _msg("two", id="toolu_01B")]
        stored = await env.store.append(s.id, batch)
        assert await env.store.append(s.id, batch) == stored  # a retry writes nothing
        mixed = await env.store.append(
            s.id, [_msg("changed", id="toolu_01B"), _msg("three", id="c"), _msg("x", id="c")]
        )
        assert mixed[0] == stored[1]  # the stored event wins
        assert mixed[1].seq == 3 and mixed[2] == mixed[1]
        assert [e.seq for e in await env.all_events(s.id)] == [1, 2, 3]

    @requires("concurrent_writers")
    async def test_fifty_concurrent_appenders(self, env: LogEnv) -> None:
        s = await env.session()
        results: dict[int, list[Event]] = {}

        async def appender(i: int) -> None:
            batch = [_msg(f"{i}-{k}", id=f"w{i}-{k}") for k in range(1 + i % 3)]
            batch.append(_msg("shared", id=f"shared-{i % 5}"))  # ids raced by ten appenders each
            results[i] = await env.store.append(s.id, batch)

        with anyio.fail_after(WAIT * 3):
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(appender, i)
        events = await env.all_events(s.id)
        expected = sum(1 + i % 3 for i in range(50)) + 5
        assert [e.seq for e in events] == list(range(1, expected + 1))
        assert len({e.id for e in events}) == expected
        by_id = {e.id: e for e in events}
        for batch in results.values():
            assert all(by_id[e.id] == e for e in batch)
        assert (await env.store.get(s.id)).last_seq == expected

    @requires("concurrent_writers")
    async def test_racing_the_same_id_stores_it_once(self, env: LogEnv) -> None:
        s = await env.session()
        got: list[Event] = []

        async def append() -> None:
            got.extend(await env.store.append(s.id, [_msg("once", id="race-1")]))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(append)
        assert len({(e.id, e.seq) for e in got}) == 1
        assert len(await env.all_events(s.id)) == 1

    async def test_reads_both_ways_with_filters_and_cursors(self, env: LogEnv) -> None:
        s = await env.session()
        kinds = ["user.message", "agent.message", "agent.tool_use"]
        for i in range(12):
            await env.store.append(s.id, [{"type": kinds[i % 3], "i": i}])
        page = await env.store.events(s.id, after=3, limit=4)
        assert [e.seq for e in page] == [4, 5, 6, 7] and page.next_cursor is not None
        page2 = await env.store.events(s.id, after=3, limit=4, cursor=page.next_cursor)
        assert [e.seq for e in page2] == [8, 9, 10, 11]
        last = await env.store.events(s.id, after=3, limit=4, cursor=page2.next_cursor)
        assert [e.seq for e in last] == [12] and last.next_cursor is None
        assert [e.seq for e in await env.store.events(s.id, after=2, before=6)] == [3, 4, 5]
        desc = await env.store.events(s.id, order="desc", limit=5)
        assert [e.seq for e in desc] == [12, 11, 10, 9, 8]
        desc2 = await env.store.events(s.id, order="desc", limit=5, cursor=desc.next_cursor)
        assert [e.seq for e in desc2] == [7, 6, 5, 4, 3]
        typed = await env.store.events(s.id, types=["agent.tool_use"], limit=2)
        assert [e.seq for e in typed] == [3, 6]
        typed2 = await env.store.events(s.id, types=["agent.tool_use"], limit=2, cursor=typed.next_cursor)
        assert [e.seq for e in typed2] == [9, 12]
        with pytest.raises(InvalidInput):  # a cursor is bound to its filter
            await env.store.events(s.id, limit=2, cursor=typed.next_cursor)
        other = await env.session()
        with pytest.raises(InvalidInput):  # ... and to its session
            await env.store.events(other.id, limit=4, after=3, cursor=page.next_cursor)
        assert len(await env.store.events(s.id, after=12)) == 0

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"after": -1},
            {"after": 10**30},
            {"after": "3"},
            {"before": 0},
            {"limit": 0},
            {"limit": 1001},
            {"limit": True},
            {"order": "sideways"},
            {"types": []},
            {"types": "user.message"},
            {"types": [""]},
            {"cursor": "!!!"},
            {"cursor": _forge_cursor_seq(10**30)},
        ],
    )
    async def test_bad_read_arguments(self, env: LogEnv, kwargs: dict[str, Any]) -> None:
        s = await env.session()
        with pytest.raises(InvalidInput):
            await env.store.events(s.id, **kwargs)

    @pytest.mark.parametrize(
        "events",
        [
            {"type": "user.message"},  # not a list
            "user.message",
            [["not", "an", "object"]],
            [{"content": "no type"}],
            [{"type": 7}],
            [{"type": ""}],
            [{"type": "x" * 129}],
            [{"type": "bad\x00type"}],
            [{"type": "t", "id": "has space"}],
            [{"type": "t", "id": "x" * 129}],
            [{"type": "t", "id": 12}],
            [{"type": "t", "id": "sql'); DROP TABLE session_events;--"}],
            [{"type": "t", "v": {1, 2}}],
            [{"type": "t", "v": float("nan")}],
            [{"type": "t", "v": "lone \ud800 surrogate"}],
            [{"type": "t", 1: "int key"}],
            [{"type": "ok"}, {"type": None}],  # one bad event spoils the batch
            [{"type": "t"}] * 1001,
        ],
    )
    async def test_bad_events_write_nothing(self, env: LogEnv, events: Any) -> None:
        s = await env.session()
        for call in (env.store.append, env.store.post):
            with pytest.raises(InvalidInput):
                await call(s.id, events)
        assert (await env.store.get(s.id)).last_seq == 0
        assert (await env.store.pending(s.id)).items == []

    async def test_deeply_nested_and_oversized_events(self, env: LogEnv) -> None:
        s = await env.session()
        nested: Any = "leaf"
        for _ in range(5000):
            nested = [nested]
        with pytest.raises(InvalidInput):
            await env.store.append(s.id, [{"type": "t", "v": nested}])
        with pytest.raises(InvalidInput):
            await env.store.append(s.id, [{"type": "t", "v": "x" * (64 * 1024 * 1024 + 1)}])
        assert (await env.store.get(s.id)).last_seq == 0

    async def test_nesting_limit_boundary_on_every_read_path(self, env: LogEnv) -> None:
        """An event exactly ``MAX_JSON_DEPTH`` deep (inline or spilled) is stored and read back equal by
        every read; one level more is refused on every write, and nothing is written."""
        s = await env.session()
        deep: Any = "leaf"
        for _ in range(MAX_JSON_DEPTH - 1):
            deep = [deep]
        pad = "p" * (self.spill_bytes * 2)
        sent = [{"type": "t", "id": "d1", "v": deep}, {"type": "t", "id": "d2", "v": deep, "pad": pad}]
        assert await env.store.append(s.id, sent) == await env.all_events(s.id)
        assert [e.data for e in await env.all_events(s.id)] == sent
        assert [(await env.store.get_event(s.id, e["id"])).data for e in sent] == sent
        tail = subscribe(env.store, s.id)
        with anyio.fail_after(WAIT):
            assert [(await tail.__anext__()).data for _ in sent] == sent
        await tail.aclose()
        queued = [{**e, "id": f"q{e['id']}"} for e in sent]
        assert [i.data for i in await env.store.post(s.id, queued)] == queued
        assert [i.data for i in await env.store.pending(s.id)] == queued
        assert [e.data for e in await env.store.promote(s.id, ["qd1", "qd2"])] == queued
        too_deep = [{"type": "t", "v": [deep]}, {"type": "t", "v": [deep], "pad": pad}]
        for call in (env.store.append, env.store.post):
            for event in too_deep:
                with pytest.raises(InvalidInput):
                    await call(s.id, [event])
        assert (await env.store.get(s.id)).last_seq == 4 and (await env.store.pending(s.id)).items == []

    async def test_unicode_and_sql_metacharacters_round_trip(self, env: LogEnv) -> None:
        s = await env.session()
        event = {"type": f"custom.{NASTY}", "text": NASTY, NASTY: [NASTY, {"nested": NASTY}], "nul": "a\x00b"}
        [stored] = await env.store.append(s.id, [event])
        [read] = await env.store.events(s.id, types=[f"custom.{NASTY}"])
        assert read == stored and read.data == {**event, "id": stored.id}

    async def test_bad_ids_and_missing_sessions(self, env: LogEnv) -> None:
        bad_ids: list[Any] = ["", "ses_' OR 1=1 --", "agt_01h0000000000000000000000z", 3]
        for bad in bad_ids:
            with pytest.raises(InvalidInput):
                await env.store.append(bad, [_msg("x")])
            with pytest.raises(InvalidInput):
                await env.store.events(bad)
        for call in (
            env.store.get(MISSING_SESSION),
            env.store.append(MISSING_SESSION, [_msg("x")]),
            env.store.events(MISSING_SESSION),
            env.store.post(MISSING_SESSION, [_msg("x")]),
            env.store.append(MISSING_SESSION, []),
        ):
            with pytest.raises(NotFound):
                await call

    # ------------------------------------------------------------------ fencing

    async def test_fence_refuses_stale_epochs_and_writes_nothing(self, env: LogEnv) -> None:
        s = await env.session()
        [e] = await env.store.append(s.id, [_msg("ok")], fence=0)
        stream = await env.store.open_stream(s.id, fence=0)
        await env.store.post(s.id, [_msg("queued", id="q1")])
        stale = 7
        for call in (
            env.store.append(s.id, [_msg("stale"), _msg("y" * (self.spill_bytes * 2))], fence=stale),
            env.store.set_status(s.id, "running", events=[{"type": "session.status_running"}], fence=stale),
            env.store.promote(s.id, ["q1"], fence=stale),
            env.store.cancel(s.id, fence=stale),
            env.store.open_stream(s.id, fence=stale),
            env.store.append_stream(s.id, stream.id, ["x"], fence=stale),
            env.store.finalize_stream(s.id, stream.id, "completed", fence=stale),
            env.store.prune_streams(s.id, fence=stale),
        ):
            with pytest.raises(LeaseLost):
                await call
        after = await env.store.get(s.id)
        assert after.last_seq == 1 and after.status == "idle"
        assert [x.id for x in await env.all_events(s.id)] == [e.id]
        assert [p.event_id for p in await env.store.pending(s.id)] == ["q1"]
        assert (await env.store.get_stream(s.id, stream.id)).status == "open"
        assert len(await env.store.streams(s.id)) == 1
        assert await env.blob_keys(s.id) == []  # the refused append's spilled blob was removed
        for bad in (-1, "0", 1.5, True):
            with pytest.raises(InvalidInput):
                await env.store.append(s.id, [_msg("x")], fence=bad)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ spill

    async def test_large_events_spill_and_read_back_everywhere(self, env: LogEnv) -> None:
        s = await env.session()
        # Measured in UTF-8 bytes: fewer characters than the threshold, more bytes.
        wide = "é" * (self.spill_bytes // 2 + 10)
        assert len(wide) < self.spill_bytes < len(wide.encode())
        small = _msg("small")
        big = _msg(wide, id="big-1")
        stored = await env.store.append(s.id, [small, big])
        keys = await env.blob_keys(s.id)
        assert len(keys) == 1 and "big-1" in keys[0]
        body = await env.blobs.get(keys[0])
        assert json.loads(body) == {**big, "id": "big-1"}
        assert stored[1].data == {**big, "id": "big-1"}
        assert (await env.all_events(s.id))[1] == stored[1]
        assert await env.store.get_event(s.id, "big-1") == stored[1]
        with anyio.fail_after(WAIT):
            tail = subscribe(env.store, s.id)
            assert [await tail.__anext__() for _ in range(2)] == stored
        # A retry of the spilled event is a no-op and keeps its blob.
        assert await env.store.append(s.id, [big]) == [stored[1]]
        assert await env.blob_keys(s.id) == keys
        assert (await env.store.get_event(s.id, "big-1")).data == stored[1].data

    async def test_missing_or_altered_blob_is_an_error_naming_the_event(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.append(s.id, [_msg("x" * (self.spill_bytes * 2), id="spilled-1")])
        [key] = await env.blob_keys(s.id)
        await env.blobs.put(key, b'{"type":"user.message","id":"spilled-1"}')
        for call in (env.store.events(s.id), env.store.get_event(s.id, "spilled-1")):
            with pytest.raises(SpillIntegrityError) as info:
                await call
            assert info.value.event_id == "spilled-1" and info.value.reason == "hash_mismatch"
        await env.blobs.delete(key)
        with pytest.raises(SpillIntegrityError) as missing:
            await env.store.events(s.id)
        assert missing.value.event_id == "spilled-1" and missing.value.reason == "missing"
        assert "spilled-1" in str(missing.value)
        with pytest.raises(SpillIntegrityError):
            await subscribe(env.store, s.id).next(timeout=WAIT)

    async def test_blob_write_failure_appends_nothing(
        self, store_backend: StoreBackend, env: LogEnv, settings: Settings
    ) -> None:
        broken = store_backend.sessions(
            self.ref(store_backend, env.tenant.id),
            blobs=_FailingPuts(env.blobs),
            settings=settings,
        )
        s = await env.session()
        with pytest.raises(StorageUnavailable):
            await broken.append(s.id, [_msg("fits"), _msg("x" * (self.spill_bytes * 2))])
        with pytest.raises(StorageUnavailable):
            await broken.post(s.id, [_msg("x" * (self.spill_bytes * 2))])
        assert (await env.store.get(s.id)).last_seq == 0
        assert (await env.store.pending(s.id)).items == []
        assert await broken.append(s.id, [_msg("small events need no blob store")]) != []

    # ------------------------------------------------------------------ inbox

    async def test_inbox_is_fifo_deduplicated_and_promoted_once(self, env: LogEnv) -> None:
        s = await env.session()
        posted = await env.store.post(s.id, [_msg("one", id="m1"), _msg("two", id="m2")])
        assert [(p.event_id, p.position, p.state) for p in posted] == [("m1", 1, "pending"), ("m2", 2, "pending")]
        again = await env.store.post(s.id, [_msg("one, retried", id="m1"), _msg("three", id="m3")])
        assert again[0] == posted[0] and again[1].position == 3
        assert [p.event_id for p in await env.store.pending(s.id)] == ["m1", "m2", "m3"]
        assert (await env.store.get(s.id)).last_seq == 0  # nothing is in the log before promotion
        [e1] = await env.store.promote(s.id, ["m1"], fence=0)
        assert e1.id == "m1" and e1.seq == 1 and e1.data["content"][0]["text"] == "one"
        assert await env.store.promote(s.id, ["m1"]) == [e1]  # exactly once
        e2, e3 = await env.store.promote(s.id, ["m2", "m3"])
        assert (e2.seq, e3.seq) == (2, 3)
        assert (await env.store.pending(s.id)).items == []
        assert [e.id for e in await env.all_events(s.id)] == ["m1", "m2", "m3"]
        with pytest.raises(NotFound):
            await env.store.promote(s.id, ["never-posted"])

    async def test_cancel_and_interrupt(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.post(s.id, [_msg(str(i), id=f"c{i}") for i in range(4)])
        cancelled = await env.store.cancel(s.id, ["c1"])
        assert [(c.event_id, c.state) for c in cancelled] == [("c1", "cancelled")]
        assert await env.store.cancel(s.id, ["c1"]) == []
        with pytest.raises(Conflict):
            await env.store.promote(s.id, ["c1"])
        rest = await env.store.cancel(s.id, fence=0)
        assert [c.event_id for c in rest] == ["c0", "c2", "c3"]
        assert (await env.store.pending(s.id)).items == []
        assert (await env.store.get(s.id)).last_seq == 0
        # A cancelled id stays taken: posting it again returns the cancelled item.
        [again] = await env.store.post(s.id, [_msg("0", id="c0")])
        assert again.state == "cancelled"

    async def test_spilled_inputs_promote_with_their_blob(self, env: LogEnv) -> None:
        s = await env.session()
        big = _msg("z" * (self.spill_bytes * 2), id="big-input")
        [item] = await env.store.post(s.id, [big])
        assert item.data == {**big, "id": "big-input"}
        assert (await env.store.pending(s.id)).items[0].data == item.data
        [event] = await env.store.promote(s.id, ["big-input"])
        assert event.data == item.data
        assert (await env.store.get_event(s.id, "big-input")).data == item.data
        assert len(await env.blob_keys(s.id)) == 1

    async def test_terminated_sessions_take_no_input(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.set_status(s.id, "terminated", events=[{"type": "session.status_terminated"}])
        with pytest.raises(Conflict):
            await env.store.post(s.id, [_msg("hello?")])

    @requires("concurrent_writers")
    async def test_racing_promoters_promote_once(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.post(s.id, [_msg("only once", id="p1")])
        got: list[Event] = []

        async def promote() -> None:
            got.extend(await env.store.promote(s.id, ["p1"]))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(promote)
        assert len({(e.id, e.seq) for e in got}) == 1
        assert [e.id for e in await env.all_events(s.id)] == ["p1"]

    async def test_wait_pending_wakes_on_post(self, env: LogEnv) -> None:
        s = await env.session()
        assert (await wait_pending(env.store, s.id, timeout=0)).items == []
        got: list[Any] = []

        calling = anyio.Event()

        async def waiter() -> None:
            calling.set()
            got.extend(await wait_pending(env.store, s.id, timeout=WAIT))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await calling.wait()
                await anyio.wait_all_tasks_blocked()  # the waiter is inside wait_pending, with nothing pending
                assert got == []
                await env.store.post(s.id, [_msg("wake up", id="w1")])
        assert [i.event_id for i in got] == ["w1"]

    # ------------------------------------------------------------------ status

    async def test_status_changes_with_their_events(self, env: LogEnv) -> None:
        s = await env.session()
        running_event = {"type": "session.status_running", "id": "st-1"}
        session, [event] = await env.store.set_status(s.id, "running", events=[running_event], fence=0)
        assert session.status == "running" and event.seq == 1
        assert await env.store.set_status(s.id, "running", events=[running_event]) == (
            await env.store.get(s.id),
            [event],
        )  # a retried transition is a no-op
        with pytest.raises(Conflict):
            await env.store.set_status(s.id, "running", events=[{"type": "session.status_running"}])
        with pytest.raises(InvalidInput):
            await env.store.set_status(s.id, "asleep")
        idle, events = await env.store.set_status(s.id, "idle")
        assert idle.status == "idle" and events == []
        assert (await env.store.get(s.id)).last_seq == 1
        assert [x.id for x in await env.store.list(status="idle")] == [s.id]

    # ------------------------------------------------------------------ streams

    async def test_streams_open_append_finalize_prune(self, env: LogEnv) -> None:
        s = await env.session()
        stream = await env.store.open_stream(s.id, message_id="msg-1", fence=0)
        assert stream.status == "open" and stream.text == "" and stream.message_id == "msg-1"
        assert await env.store.open_stream(s.id, stream_id=stream.id) == stream  # idempotent
        assert await env.store.append_stream(s.id, stream.id, ["Hel", "lo"], fence=0) == 2
        assert await env.store.append_stream(s.id, stream.id, [", wörld ☃"]) == 3
        [listed] = (await env.store.streams(s.id)).items
        assert listed.text == "Hello, wörld ☃" and listed.chunks == 3
        done = await env.store.finalize_stream(s.id, stream.id, "completed")
        assert done.status == "completed" and done.finished_at is not None and done.text == listed.text
        assert await env.store.finalize_stream(s.id, stream.id, "completed") == done  # a retry
        with pytest.raises(Conflict):
            await env.store.finalize_stream(s.id, stream.id, "aborted")
        with pytest.raises(Conflict):
            await env.store.append_stream(s.id, stream.id, ["late"])
        with pytest.raises(InvalidInput):
            await env.store.finalize_stream(s.id, stream.id, "open")
        other = await env.store.open_stream(s.id)
        await env.store.finalize_stream(s.id, other.id, "interrupted", error="runner died")
        live = await env.store.open_stream(s.id)
        assert [x.id for x in await env.store.streams(s.id)] == [live.id]
        assert len(await env.store.streams(s.id, status=None)) == 3
        assert await env.store.prune_streams(s.id) == 2
        assert [x.id for x in await env.store.streams(s.id, status=None)] == [live.id]
        with pytest.raises(NotFound):
            await env.store.get_stream(s.id, stream.id)
        with pytest.raises(InvalidInput):
            await env.store.append_stream(s.id, live.id, [b"bytes"])  # type: ignore[list-item]

    # ------------------------------------------------------------------ live tail

    async def test_subscribe_catches_up_then_follows(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.append(s.id, [_msg(str(i)) for i in range(5)])
        seen: list[int] = []
        with anyio.fail_after(WAIT):
            async with subscribe(env.store, s.id, after=2) as tail:
                seen += [(await tail.__anext__()).seq for _ in range(3)]
                await env.store.append(s.id, [_msg("live")])
                seen.append((await tail.__anext__()).seq)
                assert tail.after == 6
                assert await tail.next(timeout=0.05) is None
        assert seen == [3, 4, 5, 6]

    @requires("concurrent_writers")
    async def test_no_gap_or_duplicate_while_appends_race_the_catch_up(self, env: LogEnv) -> None:
        s = await env.session()
        total = 300
        await env.store.append(s.id, [_msg(f"pre-{i}") for i in range(100)])

        async def writer(w: int) -> None:
            for i in range(50):
                await env.store.append(s.id, [_msg(f"{w}-{i}")])

        seqs: list[int] = []
        with anyio.fail_after(WAIT * 3):
            async with anyio.create_task_group() as tg:
                for w in range(4):
                    tg.start_soon(writer, w)
                async for event in subscribe(env.store, s.id):
                    seqs.append(event.seq)
                    if event.seq == total:
                        break
        assert seqs == list(range(1, total + 1))

    async def test_a_subscriber_reconnects_without_gap(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.append(s.id, [_msg(str(i)) for i in range(10)])
        seqs: list[int] = []
        with anyio.fail_after(WAIT):
            tail = subscribe(env.store, s.id)
            for _ in range(4):
                seqs.append((await tail.__anext__()).seq)
            await tail.aclose()  # the client disconnects
            with pytest.raises(StopAsyncIteration):
                await tail.__anext__()
            await env.store.append(s.id, [_msg("while away")])
            async for event in subscribe(env.store, s.id, after=seqs[-1]):  # and resumes from its last seq
                seqs.append(event.seq)
                if event.seq == 11:
                    break
        assert seqs == list(range(1, 12))

    async def test_a_slow_consumer_misses_nothing(self, env: LogEnv) -> None:
        s = await env.session()
        tail = subscribe(env.store, s.id)
        with anyio.fail_after(WAIT):
            first = await tail.next(timeout=0.01)
            assert first is None
            for _ in range(25):  # the consumer is busy; writers go on
                await env.store.append(s.id, [_msg(str(k)) for k in range(10)], fence=0)
            seqs = [(await tail.__anext__()).seq for _ in range(250)]
        assert seqs == list(range(1, 251))

    async def test_subscriber_below_retention_gets_resync(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.append(s.id, [_msg(str(i)) for i in range(10)])
        behind = subscribe(env.store, s.id, after=3)  # a follower that has seen up to seq 3
        await env.store.prune(s.id, before_seq=6)
        with anyio.fail_after(WAIT), pytest.raises(ResyncRequired) as info:
            await behind.__anext__()
        assert info.value.retained_from == 6
        with anyio.fail_after(WAIT), pytest.raises(ResyncRequired):
            await subscribe(env.store, s.id).__anext__()
        with anyio.fail_after(WAIT):
            fresh = subscribe(env.store, s.id, after=info.value.retained_from - 1)
            assert [(await fresh.__anext__()).seq for _ in range(5)] == [6, 7, 8, 9, 10]

    # ------------------------------------------------------------------ retention

    async def test_prune_by_seq_count_and_age(self, env: LogEnv) -> None:
        s = await env.session()
        stamps: list[Event] = []
        for i in range(10):
            payload = _msg("x" * (self.spill_bytes * 2) if i in (1, 7) else str(i))
            stamps += await env.store.append(s.id, [payload])
            await anyio.sleep(0.003)  # distinct milliseconds, so ages order the events
        assert len(await env.blob_keys(s.id)) == 2
        assert await env.store.prune(s.id, before_seq=3, batch_size=1) == 2
        assert len(await env.blob_keys(s.id)) == 1  # event 2's blob went with it
        assert (await env.store.get(s.id)).first_seq == 3
        with pytest.raises(ResyncRequired) as info:
            await env.store.events(s.id)
        assert info.value.retained_from == 3
        assert [e.seq for e in await env.store.events(s.id, after=2)] == list(range(3, 11))
        assert await env.store.prune(s.id, older_than=stamps[5].created_at) == 3
        assert (await env.store.get(s.id)).first_seq == 6
        assert await env.store.prune(s.id, keep_last=2, batch_size=2) == 3
        assert [e.seq for e in await env.store.events(s.id, after=8)] == [9, 10]
        assert await env.blob_keys(s.id) == []
        assert await env.store.prune(s.id, keep_last=5) == 0
        desc = await env.store.events(s.id, order="desc", limit=1)
        assert [e.seq for e in desc] == [10]
        with pytest.raises(ResyncRequired):  # paging down to the pruned range says so
            await env.store.events(s.id, order="desc", limit=5)
        [next_event] = await env.store.append(s.id, [_msg("after pruning")])
        assert next_event.seq == 11  # seqs never restart
        bad_args: list[dict[str, Any]] = [{}, {"before_seq": 2, "keep_last": 1}, {"keep_last": -1}, {"before_seq": 0}]
        for bad in bad_args:
            with pytest.raises(InvalidInput):
                await env.store.prune(s.id, **bad)
        with pytest.raises(InvalidInput):
            await env.store.prune(s.id, keep_last=1, batch_size=0)

    async def test_gc_across_sessions_in_batches(self, env: LogEnv) -> None:
        sessions = [await env.session() for _ in range(3)]
        for s in sessions:
            await env.store.append(s.id, [_msg(str(i)) for i in range(5)] + [_msg("x" * (self.spill_bytes * 2))])
            stream = await env.store.open_stream(s.id)
            await env.store.finalize_stream(s.id, stream.id, "completed")
            await env.store.open_stream(s.id)  # still open: kept
            await env.store.post(s.id, [_msg("done", id="done"), _msg("dropped", id="dropped"), _msg("waits", id="w")])
            await env.store.promote(s.id, ["done"])
            await env.store.cancel(s.id, ["dropped"])
        await anyio.sleep(0.003)
        cutoff = datetime.now(UTC)
        await anyio.sleep(0.003)
        fresh = await env.store.append(sessions[0].id, [_msg("after the cutoff")])
        report = await env.store.gc(cutoff, batch_size=2)
        assert report.events == 3 * 7 and report.streams == 3 and report.blobs == 3
        assert report.inbox == 3  # the cancelled rows; promoted ones went with their events
        assert [e.id for e in await env.store.events(sessions[0].id, after=7)] == [fresh[0].id]
        for s in sessions:
            assert len(await env.store.streams(s.id)) == 1
            assert [p.event_id for p in await env.store.pending(s.id)] == ["w"]
            assert await env.blob_keys(s.id) == []
        assert await env.store.gc(cutoff) == type(report)()
        with pytest.raises(InvalidInput):
            await env.store.gc(datetime(2030, 1, 1))  # naive datetime
