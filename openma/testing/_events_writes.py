"""The event-log contract: fencing, spill, the inbox and status changes (part of ``EventLogContract``)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from openma.core.tail import subscribe, wait_pending
from openma.errors import (
    Conflict,
    InvalidInput,
    LeaseLost,
    NotFound,
    SpillIntegrityError,
    StorageUnavailable,
)
from openma.models import Event
from openma.ports.backend import StoreBackend
from openma.settings import Settings
from openma.testing._events_base import (
    WAIT,
    EventLogBase,
    FailingPuts,
    LogEnv,
    msg,
)
from openma.testing.capabilities import requires


class LogWriteChecks(EventLogBase):
    """Fencing, spill, the inbox and status changes."""

    # ------------------------------------------------------------------ fencing

    async def test_fence_refuses_stale_epochs_and_writes_nothing(self, env: LogEnv) -> None:
        s = await env.session()
        [e] = await env.store.append(s.id, [msg("ok")], fence=0)
        stream = await env.store.open_stream(s.id, fence=0)
        await env.store.post(s.id, [msg("queued", id="q1")])
        stale = 7
        for call in (
            env.store.append(s.id, [msg("stale"), msg("y" * (self.spill_bytes * 2))], fence=stale),
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
                await env.store.append(s.id, [msg("x")], fence=bad)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ spill

    async def test_large_events_spill_and_read_back_everywhere(self, env: LogEnv) -> None:
        s = await env.session()
        # Measured in UTF-8 bytes: fewer characters than the threshold, more bytes.
        wide = "é" * (self.spill_bytes // 2 + 10)
        assert len(wide) < self.spill_bytes < len(wide.encode())
        small = msg("small")
        big = msg(wide, id="big-1")
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
        await env.store.append(s.id, [msg("x" * (self.spill_bytes * 2), id="spilled-1")])
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
            blobs=FailingPuts(env.blobs),
            settings=settings,
        )
        s = await env.session()
        with pytest.raises(StorageUnavailable):
            await broken.append(s.id, [msg("fits"), msg("x" * (self.spill_bytes * 2))])
        with pytest.raises(StorageUnavailable):
            await broken.post(s.id, [msg("x" * (self.spill_bytes * 2))])
        assert (await env.store.get(s.id)).last_seq == 0
        assert (await env.store.pending(s.id)).items == []
        assert await broken.append(s.id, [msg("small events need no blob store")]) != []

    # ------------------------------------------------------------------ inbox

    async def test_inbox_is_fifo_deduplicated_and_promoted_once(self, env: LogEnv) -> None:
        s = await env.session()
        posted = await env.store.post(s.id, [msg("one", id="m1"), msg("two", id="m2")])
        assert [(p.event_id, p.position, p.state) for p in posted] == [("m1", 1, "pending"), ("m2", 2, "pending")]
        again = await env.store.post(s.id, [msg("one, retried", id="m1"), msg("three", id="m3")])
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
        await env.store.post(s.id, [msg(str(i), id=f"c{i}") for i in range(4)])
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
        [again] = await env.store.post(s.id, [msg("0", id="c0")])
        assert again.state == "cancelled"

    async def test_spilled_inputs_promote_with_their_blob(self, env: LogEnv) -> None:
        s = await env.session()
        big = msg("z" * (self.spill_bytes * 2), id="big-input")
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
            await env.store.post(s.id, [msg("hello?")])

    @requires("concurrent_writers")
    async def test_racing_promoters_promote_once(self, env: LogEnv) -> None:
        s = await env.session()
        await env.store.post(s.id, [msg("only once", id="p1")])
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
                await env.store.post(s.id, [msg("wake up", id="w1")])
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
