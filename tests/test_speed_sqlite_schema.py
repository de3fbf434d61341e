"""SQLite's event log and inbox are rowid tables (migration 0011): an upgraded database keeps every row,
its keys and indexes, and the log behaves the same on it (gapless seqs, dedup by id, the fence)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from openma.adapters.sql import migrate as migrations
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.engine import migrations_folder
from openma.adapters.sqlite import SqliteClient
from openma.errors import LeaseLost
from openma.ports.tenancy import TenantRef

pytestmark = pytest.mark.anyio

UPGRADE = "0011_rowid_logs.sql"


def _before_0011(tmp_path: Path) -> Path:
    """The shipped SQLite migrations up to (not including) 0011, as a folder of their own."""
    src = Path(str(migrations_folder("sqlite")))
    dst = tmp_path / "sqlite"
    dst.mkdir()
    for f in src.iterdir():
        if f.name.endswith(".sql") and f.name < UPGRADE:
            shutil.copy(f, dst / f.name)
    return dst


async def _table_sql(client: SqliteClient, name: str) -> str:
    row = await client.fetch_one("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    assert row is not None
    return str(row["sql"]).upper()


async def _indexes(client: SqliteClient, table: str) -> set[tuple[str, int, str]]:
    out = set()
    for ix in await client.fetch_all(f"PRAGMA index_list({table})"):
        cols = [c["name"] for c in await client.fetch_all(f"PRAGMA index_info({ix['name']})")]
        out.add((str(ix["origin"]), int(ix["unique"]), ",".join(cols)))
    return out


async def test_upgrade_keeps_rows_keys_and_indexes(tmp_path: Path) -> None:
    client = await SqliteClient.open(str(tmp_path / "db.sqlite"))
    try:
        folder = _before_0011(tmp_path)
        await migrations.migrate(client, folder)
        assert "WITHOUT ROWID" in await _table_sql(client, "session_events")
        before = {t: await _indexes(client, t) for t in ("session_events", "session_inbox")}
        events = [("ten_a", "ses_a", i, f"evt_{i}", "t", f'{{"n":{i}}}', None, 1000 + i) for i in range(1, 301)]
        await client.executemany("INSERT INTO session_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", events)
        inbox = [("ten_a", "ses_a", i, f"in_{i}", "t", "{}", None, "pending", None, 5, 6) for i in range(1, 11)]
        await client.executemany("INSERT INTO session_inbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", inbox)

        shutil.copy(Path(str(migrations_folder("sqlite"))) / UPGRADE, folder / UPGRADE)  # 0011 alone
        assert await migrations.migrate(client, folder) == [UPGRADE]

        for table in ("session_events", "session_inbox"):
            assert "WITHOUT ROWID" not in await _table_sql(client, table)
            assert await _indexes(client, table) == before[table]
        got = await client.fetch_all("SELECT * FROM session_events ORDER BY seq")
        assert [tuple(r.values()) for r in got] == events
        got = await client.fetch_all("SELECT * FROM session_inbox ORDER BY pos")
        assert [tuple(r.values()) for r in got] == inbox
        with pytest.raises(Exception, match="UNIQUE"):
            await client.execute(
                "INSERT INTO session_events VALUES ('ten_a', 'ses_a', 301, 'evt_1', 't', '{}', NULL, 1)"
            )
    finally:
        await client.aclose()


async def test_log_on_the_new_tables_dedups_and_fences(tmp_path: Path) -> None:
    client = await SqliteClient.open(str(tmp_path / "db.sqlite"))
    backend = SqlStoreBackend("cf", client)
    try:
        await backend.migrate()
        tenant = await backend.tenants.create(name="t")
        store = backend.sessions(TenantRef(tenant.id))
        s = await store.create(
            agent_id="agt_" + "a" * 26, environment_id="env_" + "e" * 26, agent_snapshot={}, environment_snapshot={}
        )
        big = "x" * 3000  # a row over a page's local payload in a WITHOUT ROWID table
        first = await store.append(s.id, [{"type": "t", "id": f"e{i}", "text": big} for i in range(50)])
        assert [e.seq for e in first] == list(range(1, 51))
        again = await store.append(s.id, [{"type": "t", "id": "e3", "text": big}, {"type": "t", "id": "new"}])
        assert [(e.id, e.seq) for e in again] == [("e3", 4), ("new", 51)]
        epoch = (await client.fetch_one("SELECT lease_epoch FROM sessions WHERE id = ?", (s.id,)) or {})["lease_epoch"]
        with pytest.raises(LeaseLost):
            await store.append(s.id, [{"type": "t"}], fence=int(epoch) + 1)
        page = await store.events(s.id, limit=1000)
        assert [e.seq for e in page] == list(range(1, 52))
        assert page.items[0].data["text"] == big
    finally:
        await backend.aclose()
