"""The core's live tail and inbox wait run over the small session ports alone (no SQL, no store class).

A dict-backed log with an in-process wake-up is all ``openma.core.tail`` needs: ``read_after``, ``pending``,
``arm`` and ``poll_timeout``. On asyncio and trio.
"""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

from openma.core.tail import WakeHub, subscribe, wait_pending
from openma.errors import InvalidInput, ResyncRequired
from openma.models import Event, InboxItem, Page
from openma.ports.sessions import WakeKind, Wakeup

SESSION = "ses_01h0000000000000000000000z"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TinyLog:
    """The read side of ``EventLog`` and ``Inbox`` plus ``SessionWakeups``, in memory."""

    def __init__(self, *, retained_from: int = 1) -> None:
        self.log: list[Event] = []
        self.inbox: list[InboxItem] = []
        self.retained_from = retained_from
        self.hub = WakeHub()
        self.reads = 0

    def arm(self, session_id: str, kind: WakeKind) -> Wakeup:
        return self.hub.arm((kind, session_id))

    def poll_timeout(self) -> float:
        return 5.0

    async def read_after(self, session_id: str, after: int, limit: int) -> list[Event]:
        self.reads += 1
        if self.retained_from > after + 1:
            raise ResyncRequired("pruned", retained_from=self.retained_from)
        return [e for e in self.log if e.seq > after][:limit]

    async def pending(self, session_id: str, *, limit: int = 100, cursor: str | None = None) -> Page[InboxItem]:
        return Page(self.inbox[:limit])

    def add(self, n: int) -> None:
        for _ in range(n):
            seq = len(self.log) + 1
            self.log.append(Event(f"evt_{seq}", "x", seq, NOW, {"type": "x"}))
        self.hub.notify(("events", SESSION))

    def post(self, event_id: str) -> None:
        self.inbox.append(InboxItem(event_id, "user.message", len(self.inbox) + 1, "pending", {}, None, NOW, NOW))
        self.hub.notify(("inbox", SESSION))


@pytest.mark.anyio
async def test_subscribe_catches_up_then_follows_in_order() -> None:
    log = TinyLog()
    log.add(3)
    got: list[int] = []
    async with subscribe(log, SESSION, after=1) as tail:
        with anyio.fail_after(5):
            got += [(await tail.__anext__()).seq for _ in range(2)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _add_later(log))
                got += [(await tail.__anext__()).seq for _ in range(2)]
        assert tail.after == 5
    assert got == [2, 3, 4, 5]


async def _add_later(log: TinyLog) -> None:
    await anyio.wait_all_tasks_blocked()
    log.add(2)


@pytest.mark.anyio
async def test_subscribe_checks_arguments_and_raises_resync_at_start() -> None:
    log = TinyLog(retained_from=5)
    with pytest.raises(InvalidInput):
        subscribe(log, SESSION, after=True)
    with pytest.raises(InvalidInput):
        subscribe(log, "not-a-session")
    with pytest.raises(ResyncRequired):
        await subscribe(log, SESSION, after=0).start()
    assert await subscribe(log, SESSION, after=4).next(timeout=0.01) is None


@pytest.mark.anyio
async def test_wait_pending_wakes_on_post_and_returns_a_page() -> None:
    log = TinyLog()
    assert (await wait_pending(log, SESSION, timeout=0)).items == []
    with pytest.raises(InvalidInput):
        await wait_pending(log, SESSION, timeout=float("nan"))
    async with anyio.create_task_group() as tg:

        async def post() -> None:
            await anyio.wait_all_tasks_blocked()
            log.post("in1")

        tg.start_soon(post)
        with anyio.fail_after(5):
            page = await wait_pending(log, SESSION, timeout=30)
    assert [i.event_id for i in page] == ["in1"]
