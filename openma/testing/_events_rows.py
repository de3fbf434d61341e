"""The event-log contract: session rows, appends and reads (part of :class:`openma.testing.EventLogContract`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from openma.core.jsonutil import MAX_JSON_DEPTH
from openma.core.tail import subscribe
from openma.errors import (
    Conflict,
    InvalidInput,
    NotFound,
)
from openma.models import Event
from openma.ports.backend import StoreBackend
from openma.settings import Settings
from openma.testing._events_base import (
    AGENT,
    ENVIRONMENT,
    MISSING_SESSION,
    WAIT,
    BlobsFor,
    EventLogBase,
    LogEnv,
    forge_cursor_seq,
    msg,
)
from openma.testing.capabilities import requires
from openma.testing.stores import BAD_CURSORS, NASTY


class SessionRowsChecks(EventLogBase):
    """Session rows, appends and reads."""

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
            await env.store.post(s.id, [msg("too late")])
        await env.store.delete(s.id)
        with pytest.raises(NotFound):
            await env.store.get(s.id)
        with pytest.raises(NotFound):
            await env.store.delete(s.id)

    async def test_delete_removes_events_inbox_streams_and_blobs(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.append(s.id, [msg("x" * (self.spill_bytes * 2)), msg("small")])
        await env.store.post(s.id, [msg("queued", id="q1"), msg("y" * (self.spill_bytes * 2), id="q2")])
        stream = await env.store.open_stream(s.id)
        await env.store.append_stream(s.id, stream.id, ["partial"])
        assert len(await env.blob_keys(s.id)) == 2
        await env.store.delete(s.id)
        assert await env.blob_keys(s.id) == []
        for call in (
            env.store.events(s.id),
            env.store.append(s.id, [msg("x")]),
            env.store.post(s.id, [msg("x")]),
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
        [e] = await a.store.append(s.id, [msg("secret", id="same-id")])
        for call in (
            b.store.get(s.id),
            b.store.events(s.id),
            b.store.get_event(s.id, e.id),
            b.store.append(s.id, [msg("intrusion")]),
            b.store.post(s.id, [msg("intrusion")]),
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
        first = await env.store.append(s.id, [msg("a"), {"type": "agent.message", "content": []}])
        second = await env.store.append(s.id, [{"type": "custom.unknown_type", "x": 1}])
        events = first + second
        assert [e.seq for e in events] == [1, 2, 3]
        assert all(e.id.startswith("evt_") and e.data["id"] == e.id for e in events)
        assert events[0].data == {**msg("a"), "id": events[0].id}
        assert events[0].created_at.tzinfo is not None
        assert await env.all_events(s.id) == events
        assert (await env.store.get(s.id)).last_seq == 3
        assert await env.store.get_event(s.id, events[1].id) == events[1]
        with pytest.raises(NotFound):
            await env.store.get_event(s.id, "evt-missing")
        assert await env.store.append(s.id, []) == []

    async def test_append_is_idempotent_by_event_id(self, env: LogEnv) -> None:
        s = await env.session()
        batch = [msg("one", id="toolu_01A"), msg("two", id="toolu_01B")]
        stored = await env.store.append(s.id, batch)
        assert await env.store.append(s.id, batch) == stored  # a retry writes nothing
        mixed = await env.store.append(s.id, [msg("changed", id="toolu_01B"), msg("three", id="c"), msg("x", id="c")])
        assert mixed[0] == stored[1]  # the stored event wins
        assert mixed[1].seq == 3 and mixed[2] == mixed[1]
        assert [e.seq for e in await env.all_events(s.id)] == [1, 2, 3]

    @requires("concurrent_writers")
    async def test_fifty_concurrent_appenders(self, env: LogEnv) -> None:
        s = await env.session()
        results: dict[int, list[Event]] = {}

        async def appender(i: int) -> None:
            batch = [msg(f"{i}-{k}", id=f"w{i}-{k}") for k in range(1 + i % 3)]
            batch.append(msg("shared", id=f"shared-{i % 5}"))  # ids raced by ten appenders each
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
            got.extend(await env.store.append(s.id, [msg("once", id="race-1")]))

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
            {"cursor": forge_cursor_seq(10**30)},
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
                await env.store.append(bad, [msg("x")])
            with pytest.raises(InvalidInput):
                await env.store.events(bad)
        for call in (
            env.store.get(MISSING_SESSION),
            env.store.append(MISSING_SESSION, [msg("x")]),
            env.store.events(MISSING_SESSION),
            env.store.post(MISSING_SESSION, [msg("x")]),
            env.store.append(MISSING_SESSION, []),
        ):
            with pytest.raises(NotFound):
                await call
