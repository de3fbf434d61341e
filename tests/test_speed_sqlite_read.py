"""The read path of the event log: pages are fetched as tuples (``SqlClient.fetch_tuples``), not a dict per
row, and become the same :class:`~openma.models.Event` values as before, spilled events included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sql.sessions import SqlSessionStore
from openma.ports.tenancy import TenantRef
from openma.settings import Settings
from tests.fixtures.engines import open_sqlite_backend

pytestmark = pytest.mark.anyio

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"


async def _store(backend: SqlStoreBackend, tmp_path: Path, **settings: Any) -> tuple[str, SqlSessionStore]:
    from openma.adapters.fsspec_blobs import FsspecBlobStore

    tenant = await backend.tenants.create(name="t")
    blobs = (await FsspecBlobStore.open(f"file://{tmp_path}/blobs")).for_tenant(tenant.id, internal=True)
    store = backend.sessions(TenantRef(tenant.id), blobs=blobs, settings=Settings(**settings))
    session = await store.create(agent_id=AGENT, environment_id=ENVIRONMENT, agent_snapshot={}, environment_snapshot={})
    return session.id, store


async def test_fetch_tuples_returns_the_rows_of_fetch_all_as_tuples(store_backend: SqlStoreBackend) -> None:
    db = store_backend.client
    sql = "SELECT ? AS a, ? AS b, ? AS c, ? AS d"
    params = (7, "text ? with a mark", None, "\u00e9\u6f22")
    tuples = await db.fetch_tuples(sql, params)
    dicts = await db.fetch_all(sql, params)
    assert tuples == [tuple(dicts[0].values())]
    assert type(tuples[0]) is tuple
    assert tuples[0] == (7, "text ? with a mark", None, "\u00e9\u6f22")
    assert await db.fetch_tuples("SELECT 1 AS one WHERE 1 = 0") == []


async def test_a_page_with_spilled_and_inline_events_reads_back_whole(
    store_backend: SqlStoreBackend, tmp_path: Path
) -> None:
    session_id, store = await _store(store_backend, tmp_path, event_spill_bytes=200)
    sent = [
        {"type": "user.message", "text": "small"},
        {"type": "agent.message", "text": "x" * 1000},  # spills to the blob store
        {"type": "user.message", "text": "small again", "n": [1, 2.5, None, True]},
    ]
    written = await store.append(session_id, sent)
    page = await store.events(session_id, limit=10)
    assert page.items == written
    assert [e.data["text"] for e in page.items] == ["small", "x" * 1000, "small again"]
    tail = await store.events(session_id, after=1, limit=1)  # a page of one spilled event, with a cursor
    assert [e.seq for e in tail.items] == [2] and tail.next_cursor is not None
    assert await store.read_after(session_id, 0, 10) == written


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PAYLOADS = st.lists(
    st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in ("id", "type")), JSON, max_size=4),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=PAYLOADS, limit=st.integers(min_value=1, max_value=4))
async def test_paged_reads_agree_with_point_reads_for_any_payload(
    tmp_path: Path, payloads: list[dict[str, Any]], limit: int
) -> None:
    """Whatever was appended, a page (tuple rows) gives the same events as ``get_event`` (dict rows)."""
    import uuid

    backend = await open_sqlite_backend(tmp_path / f"{uuid.uuid4().hex}.db")
    try:
        session_id, store = await _store(backend, tmp_path)
        written = await store.append(session_id, [{"type": "user.message", **p} for p in payloads])
        got = []
        cursor = None
        while True:
            page = await store.events(session_id, limit=limit, cursor=cursor)
            got.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert got == written
        assert [await store.get_event(session_id, e.id) for e in written] == written
    finally:
        await backend.aclose()
