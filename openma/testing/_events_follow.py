"""The event-log contract: streams, the live tail and retention (part of :class:`openma.testing.EventLogContract`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from openma.core.tail import subscribe
from openma.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ResyncRequired,
)
from openma.models import Event
from openma.testing._events_base import (
    WAIT,
    EventLogBase,
    LogEnv,
    msg,
)
from openma.testing.capabilities import requires


class FollowChecks(EventLogBase):
    """Streams, the live tail and retention."""

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

    async def test_streams_and_pending_page_with_cursors(self, env: LogEnv) -> None:
        s = await env.session()
        opened = [(await env.store.open_stream(s.id)).id for _ in range(5)]
        await env.store.post(s.id, [msg(str(i), id=f"in{i}") for i in range(5)])
        seen: list[str] = []
        inputs: list[str] = []
        cursor: str | None = None
        while True:
            page = await env.store.streams(s.id, limit=2, cursor=cursor)
            assert len(page.items) <= 2
            seen += [x.id for x in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        while True:
            waiting = await env.store.pending(s.id, limit=2, cursor=cursor)
            inputs += [i.event_id for i in waiting.items]
            cursor = waiting.next_cursor
            if cursor is None:
                break
        assert sorted(seen) == sorted(opened) and len(seen) == 5
        assert inputs == [f"in{i}" for i in range(5)]  # oldest first, every input once
        last = await env.store.streams(s.id, limit=5)
        assert last.next_cursor is None and len(last.items) == 5
        with pytest.raises(InvalidInput):  # a cursor of one list is refused by another
            await env.store.pending(s.id, cursor=(await env.store.streams(s.id, limit=1)).next_cursor)
        with pytest.raises(InvalidInput):
            await env.store.streams(s.id, status=None, cursor=(await env.store.streams(s.id, limit=1)).next_cursor)

    # ------------------------------------------------------------------ live tail

    async def test_subscribe_catches_up_then_follows(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.append(s.id, [msg(str(i)) for i in range(5)])
        seen: list[int] = []
        with anyio.fail_after(WAIT):
            async with subscribe(env.store, s.id, after=2) as tail:
                seen += [(await tail.__anext__()).seq for _ in range(3)]
                await env.store.append(s.id, [msg("live")])
                seen.append((await tail.__anext__()).seq)
                assert tail.after == 6
                assert await tail.next(timeout=0.05) is None
        assert seen == [3, 4, 5, 6]

    @requires("concurrent_writers")
    async def test_no_gap_or_duplicate_while_appends_race_the_catch_up(self, env: LogEnv) -> None:
        s = await env.session()
        total = 300
        await env.store.append(s.id, [msg(f"pre-{i}") for i in range(100)])

        async def writer(w: int) -> None:
            for i in range(50):
                await env.store.append(s.id, [msg(f"{w}-{i}")])

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
        await env.store.append(s.id, [msg(str(i)) for i in range(10)])
        seqs: list[int] = []
        with anyio.fail_after(WAIT):
            tail = subscribe(env.store, s.id)
            for _ in range(4):
                seqs.append((await tail.__anext__()).seq)
            await tail.aclose()  # the client disconnects
            with pytest.raises(StopAsyncIteration):
                await tail.__anext__()
            await env.store.append(s.id, [msg("while away")])
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
                await env.store.append(s.id, [msg(str(k)) for k in range(10)], fence=0)
            seqs = [(await tail.__anext__()).seq for _ in range(250)]
        assert seqs == list(range(1, 251))

    async def test_subscriber_below_retention_gets_resync(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.append(s.id, [msg(str(i)) for i in range(10)])
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
            payload = msg("x" * (self.spill_bytes * 2) if i in (1, 7) else str(i))
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
        [next_event] = await env.store.append(s.id, [msg("after pruning")])
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
            await env.store.append(s.id, [msg(str(i)) for i in range(5)] + [msg("x" * (self.spill_bytes * 2))])
            stream = await env.store.open_stream(s.id)
            await env.store.finalize_stream(s.id, stream.id, "completed")
            await env.store.open_stream(s.id)  # still open: kept
            await env.store.post(s.id, [msg("done", id="done"), msg("dropped", id="dropped"), msg("waits", id="w")])
            await env.store.promote(s.id, ["done"])
            await env.store.cancel(s.id, ["dropped"])
        await anyio.sleep(0.003)
        cutoff = datetime.now(UTC)
        await anyio.sleep(0.003)
        fresh = await env.store.append(sessions[0].id, [msg("after the cutoff")])
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
