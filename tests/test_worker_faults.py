"""Worker processes through faults (``python -m openma worker`` through :mod:`tests.worker_proc`):

* a worker killed (SIGKILL) while the model streams its answer: the next worker recovers the session and the
  user's input still gets a complete answer, once;
* Postgres restarted mid-run (a server of the test's own, never the suite's; down for 1.5 s): the workers
  reconnect and go on, and every session's input is answered exactly once, with a gapless log and nothing lost.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma import Platform, Settings
from openma.adapters.sql.backend import SqlStoreBackend
from openma.testing.pgserver import PgServer, PgServerUnavailable
from tests.fixtures.engines import ROOT_SECRET
from tests.fixtures.postgres import postgres_required
from tests.test_worker_processes import engine_env, settled, spawn, stderr_of
from tests.turn_support import TOOLSET, poll, text
from tests.worker_proc import PARTIAL

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    out: list[subprocess.Popen[str]] = []
    yield out
    for p in out:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A Postgres server of this test's own, to restart at will (the suite's server is shared)."""
    try:
        server = PgServer.start()
    except PgServerUnavailable as exc:
        if postgres_required():
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


async def sessions_with_input(oma: Platform, count: int, *, tools: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    t = oma.tenant(await oma.tenants.create(name="faults"))
    agent = await t.agents.create(name="a", model="m", tools=tools)
    environment = await t.environments.create(name="e")
    sids = [(await t.sessions.create(agent_id=agent.id, environment_id=environment.id)).id for _ in range(count)]
    for sid in sids:
        await t.sessions.post(sid, [{"type": "user.message", "content": [text("go")]}])
    return t, sids


async def check_answered_exactly_once(t: Any, sid: str) -> list[Any]:
    """The input promoted once and answered by one finished ``done``; no model error; ids unique; seqs
    gapless from the first; the session idle at the end. Returns the log."""
    log = (await t.sessions.events(sid, limit=1000)).items
    types = [e.type for e in log]
    finished = [e.data["content"] for e in log if e.type == "agent.message" and not e.data.get("interrupted")]
    assert types.count("user.message") == 1, (sid, types)
    assert finished == [[text("done")]], (sid, types)
    assert "session.error" not in types, (sid, types)
    assert len({e.id for e in log}) == len(log), (sid, types)
    assert [e.seq for e in log] == list(range(1, len(log) + 1)), (sid, types)
    assert types[-1] == "session.status_idle", (sid, types)
    return log


async def test_a_worker_killed_mid_stream_leaves_the_input_to_be_answered_by_the_next(
    tmp_path: Path, request: pytest.FixtureRequest, procs: list[subprocess.Popen[str]]
) -> None:
    env = {**engine_env("sqlite", tmp_path, request), "WORKER_STALL_FILE": str(tmp_path / "stalled")}
    async with Platform.open(Settings.from_env(env)) as oma:
        backend = oma.backend("sessions")
        assert isinstance(backend, SqlStoreBackend)
        first = spawn(env, "--concurrency", "2", "--poll-interval", "0.1")
        procs.append(first)
        t, [sid] = await sessions_with_input(oma, 1, tools=[])

        async def streaming() -> bool:
            streams = (await t.sessions.streams(sid, status="open")).items
            return any(s.text for s in streams)

        await poll(streaming, timeout=60)  # the first worker's model streamed a part, then stalled
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = spawn(env, "--concurrency", "2", "--poll-interval", "0.1")
        procs.append(second)
        try:
            await poll(lambda: settled(backend), timeout=60, every=0.1)
        except TimeoutError:
            raise AssertionError(stderr_of(second)) from None
        log = await check_answered_exactly_once(t, sid)
        types = [e.type for e in log]
        (cut,) = [e.data for e in log if e.type == "agent.message" and e.data.get("interrupted")]
        assert cut["content"] == [text(PARTIAL)]
        # Recovery closed the stream and warned; then the model ran again and answered.
        assert types.index("session.warning") < len(types) - 1 - types[::-1].index("agent.message")
        assert types.count("span.model_request_start") == 2
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0


@pytest.mark.postgres
async def test_workers_reconnect_after_postgres_restarts_mid_run(
    own_pg: PgServer, tmp_path: Path, request: pytest.FixtureRequest, procs: list[subprocess.Popen[str]]
) -> None:
    url = own_pg.create_database("workers")
    env = {
        **engine_env("sqlite", tmp_path, request),
        "OPENMA_POSTGRES_URL": url,
        "STORE_BACKENDS": '{"default": "pg"}',
        "OPENMA_ROOT_SECRET": ROOT_SECRET,
        "WORKER_MODEL_TOOL": "sleep 0.2",
        # A call waits this long for a connection: shorter than the outage, so the writes under way fail
        # (StorageUnavailable) instead of waiting it out.
        "OPENMA_PG_CONNECT_TIMEOUT": "0.5",
    }
    count = 36
    async with Platform.open(Settings.from_env(env)) as oma:
        backend = oma.backend("sessions")
        assert isinstance(backend, SqlStoreBackend)
        procs += [spawn(env, "--concurrency", "4", "--poll-interval", "0.5", delay=0.2) for _ in range(3)]
        t, sids = await sessions_with_input(oma, count, tools=[TOOLSET])

        async def mid_run() -> bool:
            row = await backend.client.fetch_one(
                "SELECT (SELECT COUNT(*) FROM session_runnable) AS runnable,"
                " (SELECT COUNT(*) FROM sessions WHERE status = 'running') AS running"
            )
            assert row is not None
            return 0 < int(row["runnable"]) <= count - 4 and int(row["running"]) > 0

        await poll(mid_run, timeout=60, every=0.05)  # some sessions done, some turns under way
        own_pg.halt()  # a fast shutdown: every connection dropped, open transactions rolled back
        await anyio.sleep(1.5)  # down long enough for the turns under way to fail a write
        own_pg.resume()
        try:
            await poll(lambda: settled(backend), timeout=90, every=0.25)
        except TimeoutError:
            raise AssertionError("\n".join(stderr_of(p) for p in procs)) from None
        assert [p.poll() for p in procs] == [None, None, None]  # they rode it out
        recovered = 0
        for sid in sids:
            log = await check_answered_exactly_once(t, sid)
            recovered += any(e.type == "session.warning" for e in log)
        assert recovered >= 1  # the restart cut turns under way; their sessions were recovered and finished
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in procs] == [0, 0, 0], [stderr_of(p) for p in procs]
