"""SQLite migration 0011 moves the event log and the inbox to rowid tables without losing or changing a row.

A database is migrated up to 0008 (the migrations as they shipped), filled through the public API with
events big enough to overflow a WITHOUT ROWID page, posted inputs and a spilled event; then the platform opens
it with every migration shipped, and everything reads back the same: seqs, ids, payloads, pending inputs,
dedup of a retried id, and new appends continue the seqs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from openma import Platform, Settings
from openma.adapters.sql import migrate as migrations
from openma.adapters.sql.migrate import load_migrations, migrations_folder
from openma.adapters.sqlite import SqliteClient

pytestmark = pytest.mark.anyio

BIG = "x" * 3000  # past the ~1 KB a WITHOUT ROWID row keeps in a 4 KB page


def settings(tmp_path: Path, *, auto_migrate: bool = True) -> Settings:
    return Settings(
        sqlite_path=str(tmp_path / "db.sqlite"),
        blob_url=f"file://{tmp_path}/blobs",
        event_spill_bytes=8192,
        auto_migrate=auto_migrate,
    )


async def snapshot(t: Any, sid: str) -> tuple[list[tuple[int, str, str, Any]], list[tuple[str, int, Any]]]:
    page = await t.sessions.events(sid, limit=1000)
    events = [(e.seq, e.id, e.type, e.data) for e in page.items]
    pending = [(item.event_id, item.position, item.data) for item in (await t.sessions.pending(sid)).items]
    return events, pending


def storage(path: Path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name IN ('session_events', 'session_inbox')"
        ).fetchall()
    return {name: sql for name, sql in rows}


async def test_0011_keeps_every_row_and_the_log_goes_on(tmp_path: Path) -> None:
    shipped = load_migrations("sqlite")
    names = [m.name for m in shipped]
    assert "0011_rowid_logs.sql" in names
    old = tmp_path / "sqlite"
    old.mkdir()
    source = migrations_folder("sqlite")
    for m in shipped:
        if m.name < "0011":
            shutil.copyfile(Path(str(source)) / m.name, old / m.name)
    client = await SqliteClient.open(str(tmp_path / "db.sqlite"))
    try:
        applied = await migrations.migrate(client, str(old))
    finally:
        await client.aclose()
    assert applied and "0011_rowid_logs.sql" not in applied
    assert all("WITHOUT ROWID" in sql for sql in storage(tmp_path / "db.sqlite").values())

    async with Platform.open(settings(tmp_path, auto_migrate=False)) as oma:
        t = oma.tenant(await oma.tenants.create(name="m"))
        agent = await t.agents.create(name="a", model="claude-sonnet-4-6")
        env = await t.environments.create(name="e")
        sid = (await t.sessions.create(agent_id=agent.id, environment_id=env.id)).id
        await t.sessions.unfenced_append(
            sid,
            [{"type": "agent.message", "id": f"evt_m{i}", "n": i, "text": BIG} for i in range(20)]
            + [{"type": "agent.message", "id": "evt_spilled", "text": "y" * 20_000}],
        )
        await t.sessions.post(
            sid, [{"type": "user.message", "id": "evt_in1", "content": [{"type": "text", "text": BIG}]}]
        )
        before = await snapshot(t, sid)

    async with Platform.open(settings(tmp_path)) as oma:
        assert storage(tmp_path / "db.sqlite") and all(
            "WITHOUT ROWID" not in sql for sql in storage(tmp_path / "db.sqlite").values()
        )
        t = oma.tenant((await oma.tenants.list()).items[0].id)
        assert await snapshot(t, sid) == before
        events = before[0]
        assert [seq for seq, *_ in events] == list(range(1, 22)) and [p[0] for p in before[1]] == ["evt_in1"]
        assert events[-1][3]["text"] == "y" * 20_000  # the spilled one reads back whole
        # A retried id is still refused, and the seqs go on.
        again = await t.sessions.unfenced_append(sid, [{"type": "agent.message", "id": "evt_m3", "n": 3}])
        assert [(e.seq, e.id) for e in again] == [(4, "evt_m3")]
        more = await t.sessions.unfenced_append(sid, [{"type": "agent.message", "id": "evt_next"}])
        assert [e.seq for e in more] == [22]
