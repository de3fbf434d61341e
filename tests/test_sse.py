"""SSE: frame encoding, and the example Starlette app end to end under uvicorn on loopback, read with httpx.

The server runs in its own process on the same SQLite file as the test, so events appended by the test
reach it through polling, and events POSTed to it through its in-process wake-ups.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from openma import InvalidInput, Platform, Settings, TenantScope
from openma.models import Event
from openma.sse import encode_event, parse_position

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
WAIT = 30.0


def test_event_frames_carry_seq_type_and_one_line_of_json() -> None:
    event = Event(
        "evt-1", "agent.message", 42, datetime(2026, 1, 2, tzinfo=UTC), {"type": "agent.message", "t": "a\nb\u2028"}
    )
    frame = encode_event(event).decode()
    lines = frame.split("\n")
    assert lines[:2] == ["id: 42", "event: agent.message"] and frame.endswith("\n\n")
    assert lines[2].startswith("data: ") and len(lines) == 5
    data = json.loads(lines[2][len("data: ") :])
    assert data == {
        "type": "agent.message",
        "t": "a\nb\u2028",
        "id": "evt-1",
        "seq": 42,
        "created_at": "2026-01-02T00:00:00Z",
    }


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


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    """The example app under uvicorn in a child process, on a loopback socket the test bound (no port race)."""
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
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", "examples", "sse_server:app"]
    proc = subprocess.Popen(
        [*cmd, "--fd", str(sock.fileno()), "--log-level", "warning"], cwd=ROOT, env=env, pass_fds=(sock.fileno(),)
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sock.close()


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
    await tenant.sessions.append(session_id, [{"type": "user.message", "n": i} for i in range(5)])
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
            await tenant.sessions.append(session_id, [{"type": "agent.message", "n": i} for i in range(3)])
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
                        await tenant.sessions.append(session_id, [{"type": "agent.message", "n": "late"}])

                    tg.start_soon(late)
                    live = await _frames(lines, lambda f: "id" in f)
    assert first[0].get("retry") == "1000"
    assert _seqs(first) == [1, 2, 3]
    assert _seqs(resumed) == list(range(4, 11))
    assert [f["event"] for f in resumed if "id" in f][-2:] == ["agent.message", "x.custom"]
    data = json.loads(resumed[-1]["data"])
    assert data["seq"] == 10 and data["type"] == "x.custom" and data["id"].startswith("evt_")
    assert idle[-1]["comment"] == "keepalive"
    assert _seqs(live) == [11]


async def test_resync_bad_positions_and_missing_sessions(server: str, tenant: TenantScope) -> None:
    session_id = await _session(tenant)
    await tenant.sessions.append(session_id, [{"type": "user.message", "n": i} for i in range(6)])
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
    await tenant.sessions.append(session_id, [{"type": "a"}])
    body = sse.session_events(tenant.sessions, session_id, heartbeat=0.01, retry_ms=None)
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
        sse.session_events(tenant.sessions, session_id, **args)
