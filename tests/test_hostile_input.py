"""Hostile input at every public entry point: a typed ``OpenmaError`` with a stable code, nothing written.

Lone surrogates, NUL, tampered cursors, wrong-typed arguments, bad blob URLs and SQLite paths, on SQLite and
Postgres. The property-based counterpart is ``test_public_api_properties.py``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from openma import ConfigError, InvalidInput, OpenmaError, Platform, Settings, sse
from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.sqlite import SqliteClient
from tests.fixtures.engines import ROOT_SECRET

pytestmark = pytest.mark.anyio

LONE = "\ud800"


def _settings(engine: str, engine_url: str, tmp_path: Path) -> Settings:
    blob_url = f"file://{tmp_path}/blobs"
    if engine == "sqlite":
        return Settings(sqlite_path=engine_url, blob_url=blob_url)
    return Settings(
        sqlite_path=str(tmp_path / "unused.db"),
        postgres_url=engine_url,
        store_backends={"default": "pg"},
        root_secret=ROOT_SECRET,
        blob_url=blob_url,
    )


@pytest.fixture
async def oma(engine: str, engine_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    async with Platform.open(_settings(engine, engine_url, tmp_path)) as platform:
        yield platform


async def _state(oma: Platform) -> tuple[Any, ...]:
    client = oma.backend("agents").client  # type: ignore[attr-defined]
    tables = [
        "tenants",
        "agents",
        "agent_versions",
        "environments",
        "sessions",
        "session_events",
        "session_inbox",
        "session_streams",
        "session_stream_chunks",
        "kv_entries",
    ]
    sql = "SELECT " + ", ".join(f"(SELECT COUNT(*) FROM {t}) AS {t}" for t in tables)
    row = await client.fetch_one(sql)
    blobs = await oma.blobs.list(limit=1000)
    return (*row.values(), len(blobs.items))


async def _refused(
    oma: Platform, calls: dict[str, Callable[[], Awaitable[Any]]], error: type[OpenmaError] = InvalidInput
) -> None:
    """Every call raises ``error`` (with a code) and leaves every table as it was; report all misses at once."""
    misses = []
    for label, call in calls.items():
        before = await _state(oma)
        try:
            await call()
        except error as exc:
            if not exc.code or await _state(oma) != before:
                misses.append(f"{label}: wrote something before {exc!r}")
        except Exception as exc:
            misses.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            misses.append(f"{label}: accepted")
    assert not misses, "\n".join(misses)


async def _fixtures(oma: Platform) -> tuple[Any, ...]:
    tenant = await oma.tenants.create(name="t")
    t = oma.tenant(tenant.id)
    agent = await t.agents.create(name="a", model="m")
    env = await t.environments.create(name="e")
    session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
    stream = await t.sessions.open_stream(session.id)
    return t, agent, env, session, stream


async def test_lone_surrogates_are_invalid_input_everywhere(oma: Platform) -> None:
    t, agent, env, session, stream = await _fixtures(oma)
    s = t.sessions
    deep = {"a": [{"b": {"c": LONE}}]}
    await _refused(
        oma,
        {
            "tenants.create name": lambda: oma.tenants.create(name=LONE),
            "tenants.create metadata value": lambda: oma.tenants.create(name="x", metadata={"k": LONE}),
            "tenants.create metadata nested key": lambda: oma.tenants.create(name="x", metadata={"k": {LONE: 1}}),
            "agents.create name": lambda: t.agents.create(name=LONE, model="m"),
            "agents.create model": lambda: t.agents.create(name="x", model=LONE),
            "agents.create model object": lambda: t.agents.create(name="x", model={"id": "m", "x": LONE}),
            "agents.create system": lambda: t.agents.create(name="x", model="m", system=LONE),
            "agents.create description": lambda: t.agents.create(name="x", model="m", description=LONE),
            "agents.create tools": lambda: t.agents.create(name="x", model="m", tools=[deep]),
            "agents.create mcp_servers": lambda: t.agents.create(name="x", model="m", mcp_servers=[{LONE: 1}]),
            "agents.create skills": lambda: t.agents.create(name="x", model="m", skills=[{"s": [LONE]}]),
            "agents.create metadata": lambda: t.agents.create(name="x", model="m", metadata=deep),
            "agents.update name": lambda: t.agents.update(agent.id, name=LONE),
            "agents.update metadata": lambda: t.agents.update(agent.id, metadata={"k": LONE}),
            "agents.update tools": lambda: t.agents.update(agent.id, tools=[deep]),
            "agents.list q": lambda: t.agents.list(q=LONE),
            "agents.list model": lambda: t.agents.list(model=LONE),
            "environments.create name": lambda: t.environments.create(name=LONE),
            "environments.create config": lambda: t.environments.create(name="x", config=deep),
            "environments.create description": lambda: t.environments.create(name="x", description=LONE),
            "environments.update config": lambda: t.environments.update(env.id, config=deep),
            "environments.update metadata": lambda: t.environments.update(env.id, metadata={"k": LONE}),
            "environments.list q": lambda: t.environments.list(q=LONE),
            "sessions.create title": lambda: s.create(agent_id=agent.id, environment_id=env.id, title=LONE),
            "sessions.create metadata": lambda: s.create(agent_id=agent.id, environment_id=env.id, metadata=deep),
            "sessions.update title": lambda: s.update(session.id, title=LONE),
            "sessions.update metadata": lambda: s.update(session.id, metadata={"k": LONE}),
            "sessions.append payload": lambda: s.unfenced_append(session.id, [{"type": "x", "d": deep}]),
            "sessions.post payload": lambda: s.post(session.id, [{"type": "x", "d": deep}]),
            "sessions.events types": lambda: s.events(session.id, types=[LONE]),
            "sessions.open_stream kind": lambda: s.open_stream(session.id, kind=LONE),
            "sessions.append_stream chunks": lambda: s.append_stream(session.id, stream.id, ["ok", LONE]),
            "sessions.finalize_stream error": lambda: s.finalize_stream(session.id, stream.id, "aborted", error=LONE),
            "kv.put key": lambda: t.kv.put(LONE, "v"),
            "kv.put value": lambda: t.kv.put("k", LONE),
            "kv.list prefix": lambda: t.kv.list(LONE),
            "blobs.put key": lambda: t.blobs.put(LONE, b"x"),
            "blobs.put metadata": lambda: t.blobs.put("k", b"x", metadata={"m": LONE}),
        },
    )


async def test_nul_is_refused_in_text_and_kept_inside_json_on_every_engine(oma: Platform) -> None:
    """One rule on both engines: NUL never in a plain text column nor in metadata (merged in SQL), escaped
    (and read back equal) in JSON documents."""
    t, agent, env, session, stream = await _fixtures(oma)
    await _refused(
        oma,
        {
            "tenants.create name": lambda: oma.tenants.create(name="a\x00b"),
            "metadata key": lambda: oma.tenants.create(name="x", metadata={"k\x00": 1}),
            "metadata value": lambda: t.environments.create(name="x", metadata={"k": ["\x00"]}),
            "agents.list q": lambda: t.agents.list(q="\x00"),
            "sessions.create title": lambda: t.sessions.create(agent_id=agent.id, environment_id=env.id, title="\x00"),
            "open_stream kind": lambda: t.sessions.open_stream(session.id, kind="a\x00"),
            "stream chunks": lambda: t.sessions.append_stream(session.id, stream.id, ["\x00"]),
            "stream error": lambda: t.sessions.finalize_stream(session.id, stream.id, "aborted", error="\x00"),
            "kv value": lambda: t.kv.put("k", "\x00"),
            "blob key": lambda: t.blobs.put("a\x00", b"x"),
        },
    )
    nul = {"k": "a\x00b", "nested": [{"v": "\x00"}]}
    made = await t.environments.create(name="n", config=nul)
    assert (await t.environments.get(made.id)).config == nul
    [event] = await t.sessions.unfenced_append(session.id, [{"type": "x", **nul}])
    [read] = (await t.sessions.events(session.id, after=event.seq - 1, limit=1)).items
    assert read.data == event.data and read.data["nested"] == nul["nested"]


def _b64(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode("utf-8", "surrogatepass")).decode().rstrip("=")


def _tampered(cursor: str) -> dict[str, str]:
    """Edited copies of a real cursor: same list (scope), a key no engine should ever be asked about."""
    data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    edits: dict[str, Any] = {
        "garbage": None,
        "bad base64": None,
        "not json": None,
        "json list": None,
        "edited scope": {**data, "s": "0" * 16},
        "unknown version": {**data, "v": 2},
        "bool version": {**data, "v": True},
    }
    if "t" in data:  # a keyset cursor: (created_at | version | seq, id)
        edits |= {
            "huge key": {**data, "t": 2**70},
            "int64 overflow": {**data, "t": 2**63},
            "negative key": {**data, "t": -1},
            "bool key": {**data, "t": True},
            "float key": {**data, "t": 1.5},
            "string key": {**data, "t": "1"},
            "NUL id": {**data, "i": "a\x00b"},
            "surrogate id": {**data, "i": LONE},
            "empty id": {**data, "i": ""},
            "long id": {**data, "i": "x" * 10_000},
            "int id": {**data, "i": 5},
        }
    else:  # a key cursor (KV, blobs)
        edits |= {
            "NUL key": {**data, "k": "a\x00b"},
            "surrogate key": {**data, "k": LONE},
            "empty key": {**data, "k": ""},
            "int key": {**data, "k": 5},
        }
    out = {name: _b64(edit) for name, edit in edits.items() if edit is not None}
    out |= {"garbage": "%%%", "bad base64": "a", "not json": _b64("x")[:-2] + "@@", "json list": _b64([1, 2])}
    return out


async def test_tampered_cursors_are_invalid_input_on_every_list(oma: Platform) -> None:
    t, agent, env, session, _ = await _fixtures(oma)
    await oma.tenants.create(name="second")
    await t.agents.create(name="b", model="m")
    await t.agents.update(agent.id, name="renamed")
    await t.environments.create(name="f")
    await t.sessions.create(agent_id=agent.id, environment_id=env.id)
    await t.sessions.unfenced_append(session.id, [{"type": "x"}, {"type": "y"}])
    for key in ("a", "b"):
        await t.kv.put(key, "v")
        await t.blobs.put(key, b"v")
    lists: dict[str, Callable[[str | None], Awaitable[Any]]] = {
        "tenants.list": lambda c: oma.tenants.list(limit=1, cursor=c),
        "agents.list": lambda c: t.agents.list(limit=1, cursor=c),
        "agents.versions": lambda c: t.agents.versions(agent.id, limit=1, cursor=c),
        "environments.list": lambda c: t.environments.list(limit=1, cursor=c),
        "sessions.list": lambda c: t.sessions.list(limit=1, cursor=c),
        "sessions.events": lambda c: t.sessions.events(session.id, limit=1, cursor=c),
        "kv.list": lambda c: t.kv.list(limit=1, cursor=c),
        "blobs.list": lambda c: t.blobs.list(limit=1, cursor=c),
    }
    calls: dict[str, Callable[[], Awaitable[Any]]] = {}
    for name, page_of in lists.items():
        first = await page_of(None)
        assert first.next_cursor is not None, name
        await page_of(first.next_cursor)  # the real one works
        for edit, cursor in _tampered(first.next_cursor).items():
            calls[f"{name} {edit}"] = lambda p=page_of, c=cursor: p(c)  # type: ignore[misc]
        for bad in (5, b"x", ["x"], "", LONE, "\x00"):
            calls[f"{name} {bad!r}"] = lambda p=page_of, c=bad: p(c)  # type: ignore[misc]
    await _refused(oma, calls)


async def test_wrong_typed_arguments_are_invalid_input(oma: Platform) -> None:
    t, agent, _, session, _ = await _fixtures(oma)
    s = t.sessions
    await t.blobs.put("k", b"data")
    calls: dict[str, Callable[[], Awaitable[Any]]] = {}
    for flag in ("no", "False", 0, 1, None):
        calls |= {
            f"tenants.list include_archived={flag!r}": lambda f=flag: oma.tenants.list(include_archived=f),
            f"agents.list include_archived={flag!r}": lambda f=flag: t.agents.list(include_archived=f),
            f"environments.list include_archived={flag!r}": lambda f=flag: t.environments.list(include_archived=f),
            f"sessions.list include_archived={flag!r}": lambda f=flag: s.list(include_archived=f),
        }
    for limit in (True, 0, -1, 501, 2**70, "10", 1.0):
        calls[f"agents.list limit={limit!r}"] = lambda n=limit: t.agents.list(limit=n)
        calls[f"sessions.events limit={limit!r}"] = lambda n=limit: s.events(session.id, limit=n if n != 501 else 1001)
    for wait in ("1", True, -1, math.nan, math.inf, 2**70, None):
        calls[f"actor wait={wait!r}"] = lambda w=wait: _enter_actor(s, session.id, w)
    calls |= {
        "actor session_id": lambda: _enter_actor(s, 5, 0),
        "events after='1'": lambda: s.events(session.id, after="1"),  # type: ignore[arg-type]
        "events after=2**70": lambda: s.events(session.id, after=2**70),
        "events order=1": lambda: s.events(session.id, order=1),  # type: ignore[arg-type]
        "subscribe after=True": lambda: _first(s.subscribe(session.id, after=True)),
        "post events=str": lambda: s.post(session.id, "x"),  # type: ignore[arg-type]
        "append fence=2**70": lambda: s.store.append(session.id, [{"type": "x"}], fence=2**70),
        "append fence='1'": lambda: s.store.append(session.id, [{"type": "x"}], fence="1"),  # type: ignore[arg-type]
        "open_stream fence=2**64": lambda: s.open_stream(session.id, fence=2**64),
        "prune keep_last='3'": lambda: s.prune(session.id, keep_last="3"),  # type: ignore[arg-type]
        "prune batch_size=True": lambda: s.prune(session.id, keep_last=1, batch_size=True),
        "pending limit=True": lambda: s.pending(session.id, limit=True),
        "wait_pending timeout='1'": lambda: s.wait_pending(session.id, timeout="1"),  # type: ignore[arg-type]
        "wait_pending timeout=nan": lambda: s.wait_pending(session.id, timeout=math.nan),
        "gc cutoff str": lambda: s.gc("yesterday"),  # type: ignore[arg-type]
        "agents.update expected_version=True": lambda: t.agents.update(agent.id, expected_version=True, name="z"),
        "agents.get_version 2**70": lambda: t.agents.get_version(agent.id, 2**70),
        "kv.incr by=2**70": lambda: t.kv.incr("c", 2**70),
        "kv.incr by='1'": lambda: t.kv.incr("c", "1"),  # type: ignore[arg-type]
        "kv.put ttl=nan": lambda: t.kv.put("k", "v", ttl=math.nan),
        "kv.put value=1.5": lambda: t.kv.put("k", 1.5),  # type: ignore[arg-type]
        "blobs.get_range offset=-1": lambda: t.blobs.get_range("k", -1),
        "blobs.get_range offset=2**70": lambda: t.blobs.get_range("k", 2**70),
        "blobs.get_range length=2**64": lambda: t.blobs.get_range("k", 0, 2**64),
        "blobs.list limit=True": lambda: t.blobs.list(limit=True),
    }
    await _refused(oma, calls)


async def _enter_actor(sessions: Any, session_id: Any, wait: Any) -> None:
    async with sessions.actor(session_id, wait=wait):
        pass


async def _first(tail: Any) -> None:
    async for _ in tail:
        return


async def test_deep_json_is_invalid_input_not_a_recursion_error(oma: Platform) -> None:
    t, _, _, session, _ = await _fixtures(oma)
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    await _refused(
        oma,
        {
            "tenant metadata": lambda: oma.tenants.create(name="x", metadata={"d": deep}),
            "agent tools": lambda: t.agents.create(name="x", model="m", tools=[{"d": deep}]),
            "environment config": lambda: t.environments.create(name="x", config={"d": deep}),
            "session metadata": lambda: t.sessions.update(session.id, metadata={"d": deep}),
            "event payload": lambda: t.sessions.unfenced_append(session.id, [{"type": "x", "d": deep}]),
        },
    )


async def test_values_that_would_not_read_back_equal_are_refused(oma: Platform) -> None:
    t, *_ = await _fixtures(oma)
    await _refused(
        oma,
        {
            "nested int key": lambda: oma.tenants.create(name="x", metadata={"a": {1: "x"}}),
            "nan": lambda: oma.tenants.create(name="x", metadata={"a": math.nan}),
            "set": lambda: t.environments.create(name="x", config={"a": {1, 2}}),
            "object": lambda: t.agents.create(name="x", model="m", tools=[{"a": object()}]),
        },
    )


# -- opening: bad blob URLs and SQLite paths


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize(
    "url",
    [
        "zip://",
        "zip://archive.zip",
        "tar://x",
        "file://{tmp}/a\x00b",
        "memory://\x00",
        "file://{tmp}/\ud800",
        "nope://x",
    ],
)
async def test_bad_blob_urls_are_config_errors_and_create_nothing(tmp_path: Path, url: str) -> None:
    url = url.replace("{tmp}", str(tmp_path / "blobs"))
    with pytest.raises(ConfigError, match="blob_url"):
        await FsspecBlobStore.open(url)
    db = tmp_path / "db" / "openma.db"
    with pytest.raises(ConfigError, match="blob_url"):
        async with Platform.open(Settings(sqlite_path=str(db), blob_url=url)):
            pass
    assert _names(tmp_path) == []  # neither the database nor a blob root was created


async def test_an_unreachable_ftp_blob_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="blob_url 'ftp://127.0.0.1:1/x' cannot be opened"):
        async with Platform.open(Settings(sqlite_path=str(tmp_path / "db" / "x.db"), blob_url="ftp://127.0.0.1:1/x")):
            pass
    assert _names(tmp_path) == []


@pytest.mark.parametrize("kind", ["nul", "surrogate", "directory", "text file", "empty"])
async def test_bad_sqlite_paths_are_config_errors_and_create_nothing(tmp_path: Path, kind: str) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 20)
    path = {
        "nul": str(tmp_path / "sub" / "a\x00.db"),
        "surrogate": str(tmp_path / "sub" / f"{LONE}.db"),
        "directory": str(tmp_path),
        "text file": str(text),
        "empty": "",
    }[kind]
    with pytest.raises(ConfigError, match="sqlite_path"):
        await SqliteClient.open(path, readers=1)
    with pytest.raises(ConfigError, match="sqlite_path"):
        async with Platform.open(Settings(sqlite_path=path, blob_url=f"file://{tmp_path}/blobs")):
            pass
    assert _names(tmp_path) == ["notes.txt"]
    assert text.read_text() == "not a database\n" * 20


@pytest.mark.parametrize("position", ["²", "١٢", "1e3", " -1", LONE, "\x00", 1.5, True, b"1", "9" * 30])
def test_sse_positions_are_invalid_input(position: object) -> None:
    with pytest.raises(InvalidInput):
        sse.parse_position(position)


async def test_sse_arguments_are_checked_at_the_call(oma: Platform) -> None:
    t, _, _, session, _ = await _fixtures(oma)
    for kwargs in ({"heartbeat": "15"}, {"heartbeat": math.nan}, {"retry_ms": "1000"}, {"retry_ms": True}):
        with pytest.raises(InvalidInput):
            await sse.session_events(t.sessions, session.id, **kwargs)
