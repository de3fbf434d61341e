"""What the SQL family adds beyond the contract: the rows themselves, the counter, fencing against a real
epoch bump, and live tails fed by other processes (SQLite polling, Postgres LISTEN/NOTIFY)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.sessions import SqlSessionStore
from openma.errors import LeaseLost
from openma.models import Event
from openma.ports.tenancy import TenantRef
from openma.settings import Settings
from tests.fixtures.engines import open_postgres_backend

pytestmark = pytest.mark.anyio

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"

WRITER = """
import sys, anyio
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.sessions import SqlSessionStore
from openma.ports.tenancy import TenantRef

async def main(engine, url, tenant, session, n):
    if engine == "sqlite":
        from openma.adapters.sqlite import SqliteClient
        client = await SqliteClient.open(url)
    else:
        from openma.adapters.postgres import PostgresClient
        client = await PostgresClient.open(url)
    backend = SqlStoreBackend("writer", client)
    store = backend.sessions(TenantRef(tenant))
    try:
        for i in range(int(n)):
            await store.append(session, [{"type": "remote.write", "i": i}])
            await anyio.sleep(0.005)
    finally:
        await backend.aclose()

anyio.run(main, *sys.argv[1:])
"""


async def _session(backend: SqlStoreBackend, **settings: Any) -> tuple[str, str, SqlSessionStore]:
    tenant = await backend.tenants.create(name="t")
    store = backend.sessions(TenantRef(tenant.id), settings=Settings(**settings))
    session = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    return tenant.id, session.id, store


async def test_spill_stub_row_and_counter(store_backend: SqlStoreBackend, tmp_path: Path) -> None:
    from openma.adapters.fsspec_blobs import FsspecBlobStore

    tenant = await store_backend.tenants.create(name="t")
    blobs = (await FsspecBlobStore.open(f"file://{tmp_path}/blobs")).for_tenant(tenant.id, internal=True)
    store = store_backend.sessions(TenantRef(tenant.id), blobs=blobs, settings=Settings(event_spill_bytes=100))
    s = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    [big] = await store.append(s.id, [{"type": "user.message", "text": "x" * 500}])
    db = store_backend.client
    row = await db.fetch_one(
        "SELECT event_id, type, data, blob_key FROM session_events WHERE tenant_id = ? AND session_id = ?",
        (tenant.id, s.id),
    )
    assert row is not None
    stub = json.loads(row["data"])
    body = await blobs.get(row["blob_key"])
    assert stub["id"] == big.id and stub["type"] == "user.message"
    assert stub["_spilled"]["key"] == row["blob_key"] and stub["_spilled"]["bytes"] == len(body)
    assert len(stub["_spilled"]["sha256"]) == 64 and "x" * 500 not in row["data"]
    # Seqs come from the session's counter, never from MAX(seq) + 1: a removed tail row leaves its seq used.
    await db.execute("DELETE FROM session_events WHERE tenant_id = ? AND session_id = ?", (tenant.id, s.id))
    [after] = await store.append(s.id, [{"type": "agent.message"}])
    assert after.seq == 2


async def test_an_epoch_bump_cuts_off_the_old_holder(store_backend: SqlStoreBackend) -> None:
    tenant_id, session_id, store = await _session(store_backend)
    db = store_backend.client
    accepted: list[Event] = []
    refused = 0
    enough = anyio.Event()
    bumped = anyio.Event()

    async def old_holder() -> None:
        nonlocal refused
        for i in range(200):
            try:
                accepted.extend(await store.append(session_id, [{"type": "agent.message", "i": i}], fence=0))
            except LeaseLost:
                refused += 1
                if bumped.is_set():
                    return
            if len(accepted) >= 20:
                enough.set()

    async def new_holder() -> None:
        await enough.wait()
        await db.execute(
            "UPDATE sessions SET lease_epoch = lease_epoch + 1 WHERE tenant_id = ? AND id = ?", (tenant_id, session_id)
        )
        bumped.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(old_holder)
            tg.start_soon(new_holder)
    assert refused >= 1
    rows = await db.fetch_all(
        "SELECT seq, event_id FROM session_events WHERE tenant_id = ? AND session_id = ? ORDER BY seq",
        (tenant_id, session_id),
    )
    # Exactly what the old holder was told was written is in the log, gapless; nothing after the bump.
    assert [(r["seq"], r["event_id"]) for r in rows] == [(e.seq, e.id) for e in accepted]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    [e] = await store.append(session_id, [{"type": "agent.message"}], fence=1)
    assert e.seq == len(rows) + 1


@pytest.mark.slow
async def test_tail_follows_writes_from_another_process(
    engine: str, engine_url: str, store_backend: SqlStoreBackend
) -> None:
    tenant_id, session_id, store = await _session(store_backend, sqlite_poll_interval=0.05)
    if engine == "postgres":
        # Prove the push path: the listener is up, so a follower waits for NOTIFY, not for a poll.
        wakeups = store_backend._wakeups
        assert wakeups is not None
        wakeups.start()
        assert wakeups.listener is not None and await wakeups.listener.wait_listening(10)
    total = 60
    seen: list[int] = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                anyio.run_process,
                [sys.executable, "-c", WRITER, engine, engine_url, tenant_id, session_id, str(total)],
            )
            async for event in store.subscribe(session_id):
                assert event.type == "remote.write"
                seen.append(event.seq)
                if event.seq == total:
                    break
    assert seen == list(range(1, total + 1))


@pytest.mark.postgres
async def test_listener_reconnects_after_its_connection_is_killed(pg_url: str) -> None:
    backend = await open_postgres_backend(pg_url)
    try:
        _, session_id, store = await _session(backend)
        wakeups = backend._wakeups
        assert wakeups is not None
        wakeups.start()
        listener = wakeups.listener
        assert listener is not None and await listener.wait_listening(10)
        killed = await backend.client.fetch_all(
            "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity WHERE query LIKE 'LISTEN openma_events%'"
        )
        assert [r["done"] for r in killed] == [True]
        seqs: list[int] = []
        with anyio.fail_after(30):
            tail = store.subscribe(session_id)
            await store.append(session_id, [{"type": "a"}])
            seqs.append((await tail.__anext__()).seq)  # polls while the listener is down
            assert await listener.wait_connects(2, 20)
            await store.append(session_id, [{"type": "b"}])
            seqs.append((await tail.__anext__()).seq)
        assert seqs == [1, 2]
    finally:
        await backend.aclose()


def test_session_parts_share_no_private_names() -> None:
    """No part of the sessions store knows which engine it runs on (the engine's hooks do), and no part imports
    another module's private names."""
    import ast
    import pathlib

    import openma.adapters.sql.sessions as pkg

    root = pathlib.Path(pkg.__file__).parent
    for path in sorted(root.glob("*.py")):
        text = path.read_text()
        assert "pg_notify" not in text and "dialect.name" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("openma."):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path.name, node.module, private)
