"""A tenant's blob view cannot reach openma's own blobs of that tenant: spilled events and snapshots (at their
current place under ``t/<tenant>/.openma/`` and the old spill place ``t/<tenant>/sessions/``)."""

from __future__ import annotations

import posixpath
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from openma import InvalidInput, Platform, Settings
from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.core import keys

TENANT = "tnt_01m8000000000000000000000a"


@pytest.fixture
def platform_settings(tmp_path: Path) -> Settings:
    return Settings(
        sqlite_path=str(tmp_path / "p.db"),
        blob_url=f"file://{tmp_path}/blobs",
        event_spill_bytes=500,
        local_sandbox_root=str(tmp_path / "sandboxes"),
    )


async def _reserved_keys(oma: Platform, tenant_id: str, session_id: str) -> list[str]:
    """Every object of the tenant that is openma's, as keys relative to the tenant."""
    root = f"t/{tenant_id}/"
    found = [i.key for i in (await oma.blobs.list(root, limit=1000)).items]
    return [k[len(root) :] for k in found if k[len(root) :].split("/", 1)[0] in (".openma", "sessions")]


@pytest.mark.anyio
async def test_a_tenant_cannot_touch_its_spilled_events_or_snapshots(platform_settings: Settings) -> None:
    async with Platform.open(platform_settings) as oma:
        t = oma.tenant(await oma.tenants.create(name="acme"))
        agent = await t.agents.create(name="coder", model="m")
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        body = {"type": "user.message", "content": [{"type": "text", "text": "x" * 2_000}]}
        [event] = await t.sessions.unfenced_append(session.id, [body])
        sandbox = await (await oma.sandbox_orchestrator()).get(t.tenant_id, session.id)
        await sandbox.write_file("a.txt", b"workspace")
        await sandbox.snapshot()
        # The previous release's spill place, still read by the log.
        await oma.blobs.put(f"t/{t.tenant_id}/sessions/{session.id}/events/old.json", b"{}")
        await t.blobs.put("notes/mine.txt", b"the tenant's own")

        internal = await _reserved_keys(oma, t.tenant_id, session.id)
        assert {k.split("/")[1] for k in internal if k.startswith(".openma/")} == {"sessions", "snapshots"}
        assert any(k.startswith("sessions/") for k in internal)
        for key in internal:
            for call in (
                t.blobs.get(key),
                t.blobs.head(key),
                t.blobs.get_range(key, 0, 1),
                t.blobs.put(key, b"overwritten"),
                t.blobs.put(key, b"x", if_match="etag"),
                t.blobs.delete(key),
            ):
                with pytest.raises(InvalidInput):
                    await call
            with pytest.raises(InvalidInput):
                async with t.blobs.open_read(key):
                    pass
        for prefix in (".openma", ".openma/", "sessions", "sessions/", f"sessions/{session.id}/", ".OpenMA/"):
            with pytest.raises(InvalidInput):
                await t.blobs.list(prefix)
            with pytest.raises(InvalidInput):
                await t.blobs.expire(prefix, datetime.now(UTC) + timedelta(days=1))
        # Lists and lifecycle rules over the tenant's whole space leave openma's objects alone.
        assert [i.key for i in (await t.blobs.list()).items] == ["notes/mine.txt"]
        assert [i.key for i in (await t.blobs.list("s")).items] == []
        assert await t.blobs.expire("", datetime.now(UTC) + timedelta(days=1)) == 1
        assert await _reserved_keys(oma, t.tenant_id, session.id) == internal
        assert (await t.sessions.get_event(session.id, event.id)).data["content"] == body["content"]


def _folded(segment: str) -> str:
    return unicodedata.normalize("NFKC", segment).casefold()


_PIECES = st.sampled_from(
    [
        ".openma",
        ".OPENMA",
        "\uff0eopenma",  # fullwidth full stop
        ".\uff4f\uff50\uff45\uff4e\uff4d\uff41",  # fullwidth letters
        "sessions",
        "SESSIONS",
        "\uff53essions",
        "sandbox-snapshots",
        "snapshots",
        "t",
        TENANT,
        "..",
        ".",
        "%2e",
        "%2e%2e",
        "%2fopenma",
        "\u2024\u2024",  # one dot leaders
        "\u0130",
        "a",
        "x.json",
    ]
)
_KEYS = st.one_of(
    st.lists(st.one_of(_PIECES, st.text(min_size=0, max_size=6)), min_size=1, max_size=5).map("/".join),
    st.lists(_PIECES, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(key=_KEYS)
@example(key=".openma/sessions/x")
@example(key="sessions/ses_1/events/e.json")
@example(key="/.openma/x")
@example(key="a/../.openma/x")
@example(key="%2e%2e/other")
@example(key="\uff53essions/x")
def test_an_accepted_tenant_key_never_names_an_internal_object(key: str) -> None:
    try:
        accepted = keys.tenant_blob_key(key)
    except InvalidInput:
        return
    full = f"t/{TENANT}/{accepted}"
    # It stays under the tenant (as a path too: no segment climbs out), and outside the reserved areas,
    # even on a filesystem that folds case and Unicode forms.
    assert posixpath.normpath(full).startswith(f"t/{TENANT}/")
    assert all(s not in ("", ".", "..") for s in accepted.split("/"))
    assert _folded(accepted.split("/")[0]) not in (".openma", "sessions")


@pytest.fixture(scope="module")
def memory_store() -> Any:
    return anyio.run(FsspecBlobStore.open, f"memory://prefixes-{uuid.uuid4().hex}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=_KEYS)
def test_the_tenant_view_refuses_or_stays_outside_the_reserved_areas(memory_store: FsspecBlobStore, key: str) -> None:
    view = memory_store.for_tenant(TENANT)

    async def attempt() -> None:
        await memory_store.put(f"t/{TENANT}/.openma/sessions/ses_1/events/e.json", b"spilled")
        await memory_store.put(f"t/{TENANT}/sessions/ses_1/events/e.json", b"old spill")
        try:
            await view.put(key, b"written by the tenant")
        except InvalidInput:
            pass
        else:
            await view.delete(key)
        try:
            listed = [i.key for i in (await view.list(key, limit=1000)).items]
        except InvalidInput:
            listed = []
        assert not any(_folded(k.split("/")[0]) in (".openma", "sessions") for k in listed)
        assert await memory_store.get(f"t/{TENANT}/.openma/sessions/ses_1/events/e.json") == b"spilled"
        assert await memory_store.get(f"t/{TENANT}/sessions/ses_1/events/e.json") == b"old spill"

    anyio.run(attempt)
