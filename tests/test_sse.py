"""SSE: frame encoding, and the example Starlette app end to end under uvicorn on loopback, read with httpx.

The server runs in its own process on the same SQLite file as the test, so events appended by the test
reach it through polling, and events POSTed to it through its in-process wake-ups.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from openma import InvalidInput, NotFound, Platform, Settings, TenantScope
from openma import sse as sse_module
from openma.models import Event
from openma.sse import encode_event, parse_position

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
WAIT = 30.0


def test_event_frames_carry_seq_type_and_one_line_of_json() -> None:
    payload = {"type": "agent.message", "id": "evt-1", "t": "a\nb\u2028", "seq": "mine", "created_at": 7}
    event = Event("evt-1", "agent.message", 42, datetime(2026, 1, 2, tzinfo=UTC), payload)
    frame = encode_event(event).decode()
    lines = frame.split("\n")
    assert lines[:2] == ["id: 42", "event: agent.message"] and frame.endswith("\n\n")
    assert lines[2].startswith("data: ") and len(lines) == 5
    data = json.loads(lines[2][len("data: ") :])
    assert data == {
        "id": "evt-1",
        "type": "agent.message",
        "seq": 42,
        "created_at": "2026-01-02T00:00:00Z",
        "data": payload,  # the payload's own "seq" and "created_at" are not overwritten by the envelope
    }


def test_headers_hold_no_hop_by_hop_field() -> None:
    import openma

    assert openma.sse is sse_module and "sse" in openma.__all__
    assert {k.lower() for k in sse_module.HEADERS} & {"connection", "keep-alive", "transfer-encoding"} == set()


def test_resume_positions() -> None:
    assert parse_position(None) is None and parse_position(" ") is None
    assert parse_position("17") == 17 and parse_position(3) == 3
    for bad in ["-1", "abc", "1.5", "9" * 30, True, 2.0]:
        with pytest.raises(InvalidInput):
            parse_position(bad)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        sqlite_path=str(tmp_path / "sse.db"), blob_url=f"file://{tmp_path}/blobs", sqlite_poll_interval=0.05
    )


@contextmanager
def _example_server(settings: Settings) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The example app (``python examples/sse_server.py``) in a child process, on a loopback socket the test
    bound (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    env = {
        **os.environ,
        "OPENMA_SQLITE_PATH": settings.sqlite_path,
        "OPENMA_BLOB_URL": settings.blob_url,
        "OPENMA_SQLITE_POLL_INTERVAL": "0.05",
        "SSE_HEARTBEAT": "0.2",
    }
    cmd = [sys.executable, str(ROOT / "examples" / "sse_server.py")]
    proc = subprocess.Popen(
        [*cmd, "--fd", str(sock.fileno()), "--log-level", "warning"], cwd=ROOT, env=env, pass_fds=(sock.fileno(),)
    )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sock.close()


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    with _example_server(settings) as (url, _):
        yield url


@pytest.fixture
async def tenant(settings: Settings) -> AsyncIterator[TenantScope]:
    async with Platform.open(settings) as oma:
        yield oma.tenant(await oma.tenants.create(name="acme"))


async def _ready(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(WAIT):
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.05)


async def _frames(lines: AsyncIterator[str], stop: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    """Parse SSE frames from a response's lines until ``stop(frame)`` is true (or the stream ends)."""
    frames: list[dict[str, str]] = []
    frame: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if frame:
                frames.append(frame)
                if stop(frame):
                    return frames
                frame = {}
            continue
        if line.startswith(":"):
            frame["comment"] = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        frame[name] = value[1:] if value.startswith(" ") else value
    if frame:
        frames.append(frame)
    return frames


def _seqs(frames: list[dict[str, str]]) -> list[int]:
    return [int(f["id"]) for f in frames if "id" in f]


async def _session(t: TenantScope) -> str:
    agent = await t.agents.create(name="coder", model="m")
    env = await t.environments.create(name="py")
    return (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id


@pytest.mark.slow
async def test_disconnect_and_resume_with_no_gap(server: str, tenant: TenantScope) -> None:
    session_id = await _session(tenant)
    await tenant.sessions.unfenced_append(session_id, [{"type": "user.message", "n": i} for i in range(5)])
    path = f"/tenants/{tenant.tenant_id}/sessions/{session_id}/events"
    async with httpx.AsyncClient(base_url=server, timeout=WAIT) as client:
        await _ready(client)
        with anyio.fail_after(WAIT):
            async with client.stream("GET", path, headers={"accept": "text/event-stream"}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                first = await _frames(response.aiter_lines(), lambda f: f.get("id") == "3")
            # The client dropped the connection after seq 3. Events land meanwhile: some from this process
            # (the server sees them by polling), some through the server itself (in-process wake-ups).
            await tenant.sessions.unfenced_append(session_id, [{"type": "agent.message", "n": i} for i in range(3)])
            posted = await client.post(path, json=[{"type": "agent.message", "via": "http"}, {"type": "x.custom"}])
            assert posted.status_code == 201 and [e["seq"] for e in posted.json()] == [9, 10]
            async with client.stream("GET", path, headers={"last-event-id": "3"}) as response:
                lines = response.aiter_lines()
                resumed = await _frames(lines, lambda f: f.get("id") == "10")
                # Then the stream goes idle and the server keeps it open with heartbeats.
                idle = await _frames(lines, lambda f: "comment" in f)
                async with anyio.create_task_group() as tg:

                    async def late() -> None:
                        await anyio.sleep(0.05)
                        await tenant.sessions.unfenced_append(session_id, [{"type": "agent.message", "n": "late"}])

                    tg.start_soon(late)
                    live = await _frames(lines, lambda f: "id" in f)
    assert first[0].get("retry") == "1000"
    assert _seqs(first) == [1, 2, 3]
    assert _seqs(resumed) == list(range(4, 11))
    assert [f["event"] for f in resumed if "id" in f][-2:] == ["agent.message", "x.custom"]
    data = json.loads(resumed[-1]["data"])
    assert data["seq"] == 10 and data["type"] == "x.custom" and data["id"].startswith("evt_")
    assert data["data"] == {"type": "x.custom", "id": data["id"]}
    assert idle[-1]["comment"] == "keepalive"
    assert _seqs(live) == [11]


async def test_resync_bad_positions_and_missing_sessions(server: str, tenant: TenantScope) -> None:
    session_id = await _session(tenant)
    await tenant.sessions.unfenced_append(session_id, [{"type": "user.message", "n": i} for i in range(6)])
    await tenant.sessions.prune(session_id, before_seq=5)
    path = f"/tenants/{tenant.tenant_id}/sessions/{session_id}/events"
    async with httpx.AsyncClient(base_url=server, timeout=WAIT) as client:
        await _ready(client)
        with anyio.fail_after(WAIT):
            async with client.stream("GET", path, headers={"last-event-id": "2"}) as response:
                frames = await _frames(response.aiter_lines(), lambda f: False)  # the server ends the stream
            assert frames[-1] == {"event": "resync", "data": '{"retained_from":5}'}
            async with client.stream("GET", path + "?after=4") as response:
                resumed = await _frames(response.aiter_lines(), lambda f: f.get("id") == "6")
            assert _seqs(resumed) == [5, 6]
            bad = await client.get(path, headers={"last-event-id": "not-a-seq"})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
            missing = await client.get(f"/tenants/{tenant.tenant_id}/sessions/ses_01h0000000000000000000000z/events")
            assert missing.status_code == 404
            page = await client.get(path, params={"format": "json", "after": 4})
            assert [e["seq"] for e in page.json()] == [5, 6]


async def test_stream_helper_heartbeats_and_closes_the_tail(tenant: TenantScope) -> None:
    from openma import sse

    session_id = await _session(tenant)
    await tenant.sessions.unfenced_append(session_id, [{"type": "a"}])
    body = await sse.session_events(tenant.sessions, session_id, heartbeat=0.01, retry_ms=None)
    got: list[bytes] = []
    with anyio.fail_after(WAIT):
        async for chunk in body:
            got.append(chunk)
            if chunk.startswith(b":"):
                break
    await body.aclose()  # type: ignore[attr-defined]
    assert got[0].startswith(b"id: 1\nevent: a\n") and got[-1] == b": keepalive\n\n"
    args: dict[str, Any] = {"last_event_id": "x"}
    with pytest.raises(InvalidInput):
        await sse.session_events(tenant.sessions, session_id, **args)


async def test_a_missing_session_fails_before_the_first_frame(tenant: TenantScope) -> None:
    from openma import sse

    with pytest.raises(NotFound):
        await sse.session_events(tenant.sessions, "ses_01h0000000000000000000000z")
    # A position below retention is not an error of the request: the stream says so with a resync frame.
    session_id = await _session(tenant)
    await tenant.sessions.unfenced_append(session_id, [{"type": "a"}, {"type": "b"}, {"type": "c"}])
    await tenant.sessions.prune(session_id, before_seq=3)
    body = await sse.session_events(tenant.sessions, session_id, after=1, retry_ms=None)
    with anyio.fail_after(WAIT):
        frames = [chunk async for chunk in body]
    assert frames == [b'event: resync\ndata: {"retained_from":3}\n\n']


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_stop_ends_an_idle_stream_and_closes_the_tail(tenant: TenantScope, anyio_backend: str) -> None:
    from openma import sse

    session_id = await _session(tenant)
    await tenant.sessions.unfenced_append(session_id, [{"type": "a"}])
    stop = anyio.Event()
    body = await sse.session_events(tenant.sessions, session_id, heartbeat=3600, retry_ms=None, stop=stop)
    got: list[bytes] = []
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                async for chunk in body:
                    got.append(chunk)
                    if len(got) == 1:
                        tg.start_soon(set_stop)

            async def set_stop() -> None:
                stop.set()  # the reader is now waiting for a second event that never comes

            tg.start_soon(read)
    assert len(got) == 1 and got[0].startswith(b"id: 1\n")
    # Already set: the next body ends at once, without a frame.
    body = await sse.session_events(tenant.sessions, session_id, retry_ms=None, stop=stop)
    assert [chunk async for chunk in body] == []


@pytest.mark.slow
async def test_server_shutdown_ends_open_streams_cleanly(settings: Settings, tenant: TenantScope) -> None:
    """uvicorn waits for open responses before it exits: the example's server tells the streams to end."""
    session_id = await _session(tenant)
    await tenant.sessions.unfenced_append(session_id, [{"type": "user.message", "n": 1}])
    path = f"/tenants/{tenant.tenant_id}/sessions/{session_id}/events"
    with _example_server(settings) as (url, proc):
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            await _ready(client)
            with anyio.fail_after(WAIT):
                async with client.stream("GET", path) as response:
                    assert response.status_code == 200
                    lines = response.aiter_lines()
                    first = await _frames(lines, lambda f: f.get("id") == "1")
                    asked = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    rest = await _frames(lines, lambda f: False)  # returns when the body ends; raises if cut
                    ended = time.monotonic() - asked
        code = await anyio.to_thread.run_sync(proc.wait, WAIT)
        exited = time.monotonic() - asked
    assert _seqs(first) == [1]
    assert all("id" not in f for f in rest)  # nothing but heartbeats after the last event
    assert ended < 5 and exited < 10, (ended, exited)
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled once it has shut down
