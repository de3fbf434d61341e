"""Property-based: every public entry point, driven with generated hostile arguments, on SQLite and Postgres.

Each call either succeeds, and then what it accepted reads back equal, or raises an ``OpenmaError`` with a
non-empty ``code``; after a refusal nothing was written (row counts and update stamps are unchanged). No
codec, driver, overflow or recursion error may escape. One platform per test (it is opened once, on a
portal thread, and every example reuses it), a bounded number of examples per entry point.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openma import InvalidInput, OpenmaError, Platform, Settings
from openma.core.pagination import Keyset, encode_cursor, scope_of
from openma.models import Agent, Environment, Session, Tenant
from tests.fixtures.engines import ROOT_SECRET

T = TypeVar("T")

#: Examples per entry point and engine (raise it with OPENMA_PROPERTY_EXAMPLES for a longer hunt).
EXAMPLES = settings(
    max_examples=int(os.environ.get("OPENMA_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# -- strategies

#: Strings no engine can store as plain text, or that trip codecs: lone surrogates, NUL, control characters.
NASTY = ["\ud800", "\udfff", "a\udc80b", "\x00", "a\x00", "\x1f", "\u2028", "%_\\", "", " ", "x" * 300]
any_text = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(exclude_categories=()), max_size=6),
    st.sampled_from(NASTY),
    st.builds(lambda a, b: a + b, st.text(max_size=4), st.sampled_from(NASTY)),
)
huge_ints = st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63) - 1, -1])
numbers = st.one_of(
    st.integers(min_value=-5, max_value=1000),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)


def _nest(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


deep_json = st.integers(min_value=1, max_value=120).map(_nest)
json_objects = st.one_of(st.none(), st.dictionaries(any_text, st.one_of(json_values, deep_json), max_size=4))
wrong_types = st.one_of(
    st.binary(max_size=3), st.lists(scalars, max_size=2), st.just(object()), st.just({"a": 1}), st.just(1.5)
)
anything = st.one_of(scalars, wrong_types)
bools = st.one_of(st.booleans(), st.sampled_from(["no", "yes", 0, 1, None, "False"]))
limits = st.one_of(st.integers(min_value=-2, max_value=1200), huge_ints, st.sampled_from([True, "10", 1.0, None]))
datetimes = st.one_of(
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(),  # naive
    st.sampled_from(["yesterday", 0]),
)
orders = st.one_of(st.sampled_from(["asc", "desc"]), anything)


def _tampered(draw_key: tuple[Any, Any]) -> str:
    created, ident = draw_key
    import base64
    import json

    raw = json.dumps({"v": 1, "s": "x", "t": created, "i": ident})
    return base64.urlsafe_b64encode(raw.encode("utf-8", "surrogatepass")).decode().rstrip("=")


cursors = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.builds(lambda k, i: encode_cursor(scope_of("any"), Keyset(k, i)), st.integers(0, 10), st.just("x")),
    st.tuples(st.one_of(huge_ints, st.booleans(), any_text), any_text).map(_tampered),
    anything,
)


def _short(value: Any) -> Any:
    """A wait that ends at once: a non-negative number becomes 0 (NaN and negatives stay, to be refused)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return 0
    return value


# -- the platform under test


class Harness:
    """One open platform on a portal thread, with a tenant, an agent, an environment and a session."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, oma: Platform) -> None:
        self.portal = portal
        self.oma = oma
        self.tenant: Tenant = self.run(lambda: oma.tenants.create(name="props"))
        self.t = oma.tenant(self.tenant.id)
        self.agent: Agent = self.run(lambda: self.t.agents.create(name="a", model="m"))
        self.env: Environment = self.run(lambda: self.t.environments.create(name="e"))
        self.session: Session = self.run(
            lambda: self.t.sessions.create(agent_id=self.agent.id, environment_id=self.env.id)
        )
        #: A session for calls that change its status.
        self.scratch: Session = self.run(
            lambda: self.t.sessions.create(agent_id=self.agent.id, environment_id=self.env.id)
        )

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            return await fn()

        return self.portal.call(call)

    def state(self) -> tuple[Any, ...]:
        """Every row count and update stamp of the database (one round trip)."""
        client = self.oma.backend("agents").client  # type: ignore[attr-defined]
        parts = [
            "(SELECT COUNT(*) FROM tenants)",
            "(SELECT COUNT(*) FROM agents)",
            "(SELECT COALESCE(SUM(updated_at), 0) FROM agents)",
            "(SELECT COUNT(*) FROM agent_versions)",
            "(SELECT COUNT(*) FROM environments)",
            "(SELECT COALESCE(SUM(updated_at), 0) FROM environments)",
            "(SELECT COUNT(*) FROM sessions)",
            "(SELECT COALESCE(SUM(updated_at), 0) FROM sessions)",
            "(SELECT COUNT(*) FROM session_events)",
            "(SELECT COUNT(*) FROM session_inbox)",
            "(SELECT COUNT(*) FROM session_streams)",
            "(SELECT COUNT(*) FROM session_stream_chunks)",
            "(SELECT COUNT(*) FROM kv_entries)",
            "(SELECT COALESCE(SUM(updated_at), 0) FROM kv_entries)",
        ]
        sql = "SELECT " + ", ".join(f"{p} AS c{i}" for i, p in enumerate(parts))
        row = self.run(lambda: client.fetch_one(sql))
        return tuple(row.values())

    def attempt(self, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Run one call: its result, or ``None`` after a typed refusal that wrote nothing."""
        before = self.state()
        try:
            return self.run(fn)
        except OpenmaError as exc:
            refused = exc
        assert isinstance(refused.code, str) and refused.code, refused
        assert self.state() == before, f"{refused!r} left rows behind"
        return None


@pytest.fixture
def h(engine: str, engine_url: str, tmp_path: Path) -> Iterator[Harness]:
    blob_url = f"file://{tmp_path}/blobs"
    if engine == "sqlite":
        config = Settings(sqlite_path=engine_url, blob_url=blob_url, event_spill_bytes=4_000)
    else:
        config = Settings(
            sqlite_path=str(tmp_path / "unused.db"),
            postgres_url=engine_url,
            store_backends={"default": "pg"},
            root_secret=ROOT_SECRET,
            blob_url=blob_url,
            event_spill_bytes=4_000,
        )
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(Platform.open(config)) as oma,
    ):
        yield Harness(portal, oma)


# -- tenants, agents, environments


@EXAMPLES
@given(name=st.one_of(any_text, wrong_types), metadata=st.one_of(json_objects, wrong_types))
def test_tenants_create(h: Harness, name: Any, metadata: Any) -> None:
    made = h.attempt(lambda: h.oma.tenants.create(name=name, metadata=metadata))
    if made is not None:
        assert made.name == name and made.metadata == (metadata or {})
        assert h.run(lambda: h.oma.tenants.get(made.id)) == made


@EXAMPLES
@given(
    name=any_text,
    model=st.one_of(any_text, st.dictionaries(any_text, json_values, max_size=2), st.just({"id": "m"})),
    system=st.one_of(any_text, wrong_types),
    tools=st.one_of(st.none(), st.lists(st.dictionaries(any_text, json_values, max_size=2), max_size=2), anything),
    metadata=json_objects,
)
def test_agents_create(h: Harness, name: Any, model: Any, system: Any, tools: Any, metadata: Any) -> None:
    made = h.attempt(lambda: h.t.agents.create(name=name, model=model, system=system, tools=tools, metadata=metadata))
    if made is not None:
        assert (made.name, made.model, made.system) == (name, model, system)
        assert made.tools == (tools or []) and made.metadata == (metadata or {})
        assert h.run(lambda: h.t.agents.get(made.id)) == made


@EXAMPLES
@given(
    field=st.sampled_from(["name", "system", "description", "tools", "metadata", "model", "nope"]),
    value=st.one_of(json_values, json_objects),
    expected_version=st.one_of(st.none(), limits),
)
def test_agents_update(h: Harness, field: str, value: Any, expected_version: Any) -> None:
    before = h.run(lambda: h.t.agents.get(h.agent.id))
    changes = {field: value}
    got = h.attempt(lambda: h.t.agents.update(h.agent.id, expected_version=expected_version, **changes))
    after = h.run(lambda: h.t.agents.get(h.agent.id))
    if got is None:
        assert after == before
    else:
        assert after == got
        if field in ("name", "system", "description", "model"):
            cleared = value is None and field in ("system", "description")  # None clears them
            assert getattr(got, field) == ("" if cleared else value)


@EXAMPLES
@given(
    name=any_text,
    config=st.one_of(json_objects, wrong_types),
    description=st.one_of(any_text, wrong_types),
    metadata=json_objects,
)
def test_environments_create_and_update(h: Harness, name: Any, config: Any, description: Any, metadata: Any) -> None:
    made = h.attempt(
        lambda: h.t.environments.create(name=name, config=config, description=description, metadata=metadata)
    )
    if made is not None:
        assert (made.name, made.config, made.description, made.metadata) == (
            name,
            config or {},
            description,
            metadata or {},
        )
        assert h.run(lambda: h.t.environments.get(made.id)) == made
    before = h.run(lambda: h.t.environments.get(h.env.id))
    got = h.attempt(lambda: h.t.environments.update(h.env.id, config=config, description=description))
    after = h.run(lambda: h.t.environments.get(h.env.id))
    assert after == (before if got is None else got)
    if got is not None:
        assert (got.config, got.description) == (config or {}, description)


@EXAMPLES
@given(title=st.one_of(st.none(), any_text, wrong_types), metadata=st.one_of(json_objects, wrong_types))
def test_sessions_create_and_update(h: Harness, title: Any, metadata: Any) -> None:
    s = h.t.sessions
    made = h.attempt(lambda: s.create(agent_id=h.agent.id, environment_id=h.env.id, title=title, metadata=metadata))
    if made is not None:
        assert (made.title, made.metadata) == (title, metadata or {})
        assert h.run(lambda: s.get(made.id)) == made
    before = h.run(lambda: s.get(h.session.id))
    got = h.attempt(lambda: s.update(h.session.id, title=title))
    after = h.run(lambda: s.get(h.session.id))
    assert after == (before if got is None else got)
    if got is not None:
        assert got.title == title


@EXAMPLES
@given(
    which=st.sampled_from(["tenants", "agents", "versions", "environments", "sessions"]),
    limit=limits,
    cursor=cursors,
    order=orders,
    include_archived=bools,
    q=st.one_of(st.none(), any_text, wrong_types),
    after=datetimes,
)
def test_entity_lists(
    h: Harness, which: str, limit: Any, cursor: Any, order: Any, include_archived: Any, q: Any, after: Any
) -> None:
    t = h.t
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "tenants": lambda: h.oma.tenants.list(
            limit=limit, cursor=cursor, order=order, include_archived=include_archived
        ),
        "agents": lambda: t.agents.list(
            limit=limit, cursor=cursor, order=order, include_archived=include_archived, q=q, created_after=after
        ),
        "versions": lambda: t.agents.versions(h.agent.id, limit=limit, cursor=cursor, order=order),
        "environments": lambda: t.environments.list(
            limit=limit, cursor=cursor, order=order, include_archived=include_archived, q=q, created_before=after
        ),
        "sessions": lambda: t.sessions.list(
            limit=limit, cursor=cursor, order=order, include_archived=include_archived, status=q, created_after=after
        ),
    }
    page = h.attempt(calls[which])
    if page is not None:
        assert isinstance(limit, int) and not isinstance(limit, bool) and len(page.items) <= limit
        assert which == "versions" or isinstance(include_archived, bool)


@EXAMPLES
@given(
    which=st.sampled_from(["tenants", "agents", "versions", "environments", "sessions", "events", "kv", "blobs"]),
    garbage=st.one_of(st.text(max_size=60), st.text(st.characters(exclude_categories=()), max_size=20), cursors),
)
def test_garbage_cursors_are_invalid_input_on_every_list(h: Harness, which: str, garbage: Any) -> None:
    """Whatever a client sends as a cursor, every list answers InvalidInput (never a crash, never page one)."""
    if garbage is None:
        return
    t = h.t
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "tenants": lambda: h.oma.tenants.list(cursor=garbage),
        "agents": lambda: t.agents.list(cursor=garbage),
        "versions": lambda: t.agents.versions(h.agent.id, cursor=garbage),
        "environments": lambda: t.environments.list(cursor=garbage),
        "sessions": lambda: t.sessions.list(cursor=garbage),
        "events": lambda: t.sessions.events(h.session.id, cursor=garbage),
        "kv": lambda: t.kv.list(cursor=garbage),
        "blobs": lambda: t.blobs.list(cursor=garbage),
    }
    with pytest.raises(InvalidInput):
        h.run(calls[which])


# -- sessions: events, inbox, streams, retention, the actor


events_lists = st.one_of(
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"type": st.one_of(st.just("note"), any_text)}, optional={"x": json_values}),
            st.fixed_dictionaries({"type": st.just("note"), "id": any_text}),
            st.fixed_dictionaries({"type": st.just("deep"), "x": deep_json}),
            json_values,
        ),
        max_size=3,
    ),
    anything,
)


@EXAMPLES
@given(events=events_lists, via=st.sampled_from(["append", "post"]))
def test_session_append_and_post(h: Harness, events: Any, via: str) -> None:
    s = h.t.sessions
    if via == "append":
        written = h.attempt(lambda: s.unfenced_append(h.session.id, events))
        for w in written or []:  # an id logged before returns the stored event, with its own seq
            assert h.run(lambda w=w: s.get_event(h.session.id, w.id)) == w  # type: ignore[misc]
        if written and not any("id" in e for e in events):  # with given ids, a retry returns the first version
            assert [{**e, "id": w.id} for e, w in zip(events, written, strict=True)] == [w.data for w in written]
    else:
        items = h.attempt(lambda: s.post(h.session.id, events))
        if items:
            pending = h.run(lambda: s.pending(h.session.id, limit=1000))
            by_id = {i.event_id: i for i in pending}
            for item in items:  # an id posted before returns that (possibly cancelled) item as stored
                assert item.state != "pending" or by_id[item.event_id] == item
            if not any("id" in e for e in events):
                assert [{**e, "id": i.event_id} for e, i in zip(events, items, strict=True)] == [i.data for i in items]
                assert all(i.state == "pending" for i in items)
            h.run(lambda: s.cancel(h.session.id, [i.event_id for i in items]))


@EXAMPLES
@given(
    which=st.sampled_from(["events", "subscribe", "pending", "streams", "get_event", "prune", "wait_pending"]),
    a=st.one_of(st.integers(0, 5), huge_ints, anything),
    b=st.one_of(st.none(), st.integers(1, 5), anything),
    limit=limits,
    cursor=cursors,
    types=st.one_of(st.none(), st.lists(any_text, max_size=2), anything),
    order=orders,
)
def test_session_reads(h: Harness, which: str, a: Any, b: Any, limit: Any, cursor: Any, types: Any, order: Any) -> None:
    s, sid = h.t.sessions, h.session.id

    async def subscribe() -> None:
        tail = s.subscribe(sid, after=a)
        with anyio.move_on_after(0.01):
            async for _ in tail:
                break

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "events": lambda: s.events(sid, after=a, before=b, limit=limit, types=types, cursor=cursor, order=order),
        "subscribe": subscribe,
        "pending": lambda: s.pending(sid, limit=limit),
        "streams": lambda: s.streams(sid, status=b, limit=limit),
        "get_event": lambda: s.get_event(sid, a),
        "prune": lambda: s.prune(sid, keep_last=a, batch_size=limit) if b is None else s.prune(sid, before_seq=b),
        "wait_pending": lambda: s.wait_pending(sid, timeout=_short(a), limit=limit),
    }
    h.attempt(calls[which])


@EXAMPLES
@given(
    kind=st.one_of(st.just("message"), any_text, wrong_types),
    message_id=st.one_of(st.none(), any_text),
    chunks=st.one_of(st.lists(any_text, max_size=3), anything),
    status=st.one_of(st.sampled_from(["completed", "aborted"]), anything),
    error=st.one_of(st.none(), any_text, wrong_types),
    fence=st.one_of(st.none(), limits),
)
def test_session_streams(
    h: Harness, kind: Any, message_id: Any, chunks: Any, status: Any, error: Any, fence: Any
) -> None:
    s, sid = h.t.sessions, h.session.id
    stream = h.attempt(lambda: s.open_stream(sid, kind=kind, message_id=message_id, fence=fence))
    if stream is None:
        return
    assert (stream.kind, stream.message_id) == (kind, message_id)
    count = h.attempt(lambda: s.append_stream(sid, stream.id, chunks))
    text = "".join([chunks] if isinstance(chunks, str) else chunks) if count is not None else ""
    assert h.run(lambda: s.get_stream(sid, stream.id)).text == text
    done = h.attempt(lambda: s.finalize_stream(sid, stream.id, status, error=error))
    got = h.run(lambda: s.get_stream(sid, stream.id))
    if done is not None:
        assert (got.status, got.error, got.text) == (status, error, text)
    else:
        assert got.status == "open"


@settings(EXAMPLES, max_examples=max(10, EXAMPLES.max_examples // 3))
@given(wait=st.one_of(st.sampled_from([0, 0.0, 0.01]), anything, huge_ints))
def test_session_actor(h: Harness, wait: Any) -> None:
    async def hold() -> None:
        async with h.t.sessions.actor(h.session.id, wait=wait) as actor:
            assert actor.session_id == h.session.id

    h.attempt(hold)


WELL_FORMED = [f"{p}_{'0' * 26}" for p in ("tnt", "agt", "env", "ses", "stm", "evt")]
ids = st.one_of(any_text, wrong_types, st.sampled_from([*WELL_FORMED, "evt-1", "AGT_x"]))
statuses = st.one_of(st.sampled_from(["idle", "running", "rescheduling", "terminated"]), any_text, wrong_types)


@EXAMPLES
@given(
    op=st.sampled_from(
        [
            "tenant",
            "tenants.get",
            "tenants.archive",
            "agents.get",
            "agents.archive",
            "agents.delete",
            "agents.versions",
            "agents.get_version",
            "environments.get",
            "environments.archive",
            "environments.delete",
            "sessions.get",
            "sessions.archive",
            "sessions.delete",
            "sessions.create",
            "get_event",
            "get_stream",
            "cancel",
            "promote",
            "set_status",
            "prune_streams",
            "gc",
        ]
    ),
    ident=ids,
    other=st.one_of(anything, huge_ints, datetimes, st.lists(statuses, max_size=2)),
)
def test_calls_by_id(h: Harness, op: str, ident: Any, other: Any) -> None:
    t, s, sid = h.t, h.t.sessions, h.session.id
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "tenant": lambda: h.oma.tenant(ident).agents.list(),
        "tenants.get": lambda: h.oma.tenants.get(ident),
        "tenants.archive": lambda: h.oma.tenants.archive(ident),
        "agents.get": lambda: t.agents.get(ident),
        "agents.archive": lambda: t.agents.archive(ident),
        "agents.delete": lambda: t.agents.delete(ident),
        "agents.versions": lambda: t.agents.versions(ident),
        "agents.get_version": lambda: t.agents.get_version(h.agent.id, other),
        "environments.get": lambda: t.environments.get(ident),
        "environments.archive": lambda: t.environments.archive(ident),
        "environments.delete": lambda: t.environments.delete(ident),
        "sessions.get": lambda: s.get(ident),
        "sessions.archive": lambda: s.archive(ident),
        "sessions.delete": lambda: s.delete(ident),
        "sessions.create": lambda: s.create(agent_id=ident, environment_id=h.env.id),
        "get_event": lambda: s.get_event(sid, ident),
        "get_stream": lambda: s.get_stream(sid, ident),
        "cancel": lambda: s.cancel(sid, [ident]),
        "promote": lambda: s.unfenced_promote(sid, [ident]),
        "set_status": lambda: s.unfenced_set_status(h.scratch.id, ident, from_statuses=other),
        "prune_streams": lambda: s.prune_streams(sid, older_than=other),
        "gc": lambda: s.gc(other, batch_size=ident),
    }
    h.attempt(calls[op])


@EXAMPLES
@given(
    op=st.sampled_from(["append", "promote", "set_status", "open_stream", "events"]),
    a=st.one_of(statuses, events_lists, limits),
    b=st.one_of(st.none(), any_text, json_objects, limits),
)
def test_actor_methods(h: Harness, op: str, a: Any, b: Any) -> None:
    with h.portal.wrap_async_context_manager(h.t.sessions.actor(h.scratch.id, wait=5)) as actor:
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "append": lambda: actor.append(a),
            "promote": lambda: actor.promote(limit=a),
            "set_status": lambda: actor.set_status(a, stop_reason=b),
            "open_stream": lambda: actor.open_stream(message_id=b, kind=a),
            "events": lambda: actor.events(after=a, limit=b, types=None),
        }
        h.attempt(calls[op])


# -- KV and blobs


@EXAMPLES
@given(
    op=st.sampled_from(["put", "put_if_absent", "cas", "incr", "get", "delete", "list"]),
    key=st.one_of(st.sampled_from(["k", "a/b"]), any_text, wrong_types),
    value=st.one_of(any_text, numbers, wrong_types),
    ttl=st.one_of(st.none(), numbers, st.just(timedelta(seconds=60)), wrong_types),
    limit=limits,
    cursor=cursors,
)
def test_kv(h: Harness, op: str, key: Any, value: Any, ttl: Any, limit: Any, cursor: Any) -> None:
    kv = h.t.kv
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "put": lambda: kv.put(key, value, ttl=ttl),
        "put_if_absent": lambda: kv.put_if_absent(key, value, ttl=ttl),
        "cas": lambda: kv.compare_and_set(key, None, value, ttl=ttl),
        "incr": lambda: kv.incr(key, value, ttl=ttl),
        "get": lambda: kv.get(key),
        "delete": lambda: kv.delete(key),
        "list": lambda: kv.list(key, cursor=cursor, limit=limit),
    }
    got = h.attempt(calls[op])
    if op == "put" and got is not None and not isinstance(ttl, int | float):
        entry = h.run(lambda: kv.get(key))
        assert entry is not None and entry.value == value


@EXAMPLES
@given(
    op=st.sampled_from(["put", "put_if", "get_range", "open_read", "list", "head", "delete", "expire"]),
    key=st.one_of(st.sampled_from(["k", "a/b.txt"]), any_text, wrong_types),
    data=st.one_of(st.binary(max_size=8), any_text, wrong_types),
    metadata=st.one_of(st.none(), st.dictionaries(any_text, any_text, max_size=2), wrong_types),
    content_type=st.one_of(st.none(), st.just("text/plain"), any_text),
    offset=st.one_of(st.integers(0, 4), huge_ints, anything),
    limit=limits,
    cursor=cursors,
)
def test_blobs(
    h: Harness, op: str, key: Any, data: Any, metadata: Any, content_type: Any, offset: Any, limit: Any, cursor: Any
) -> None:
    blobs = h.t.blobs
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "put": lambda: blobs.put(key, data, content_type=content_type, metadata=metadata),
        "put_if": lambda: blobs.put("k", b"x", if_match=content_type, ttl=offset),
        "open_read": lambda: _read_all(blobs, key, offset, limit),
        "expire": lambda: blobs.expire(key, offset),
        "get_range": lambda: blobs.get_range(key, offset, None),
        "list": lambda: blobs.list(key, cursor=cursor, limit=limit),
        "head": lambda: blobs.head(key),
        "delete": lambda: blobs.delete(key),
    }
    listed = h.run(lambda: blobs.list(limit=1000))
    got = h.attempt(calls[op])
    if op == "put" and got is not None:
        assert h.run(lambda: blobs.get(key)) == data
        assert h.run(lambda: blobs.head(key)).metadata == (metadata or {})
    elif got is None and op in ("put", "put_if", "expire"):
        assert h.run(lambda: blobs.list(limit=1000)).items == listed.items


async def _read_all(blobs: Any, key: Any, offset: Any, chunk_size: Any) -> bytes:
    async with blobs.open_read(key, offset=offset, chunk_size=chunk_size) as reader:
        return bytes(await reader.read())


def test_the_harness_sees_writes(h: Harness) -> None:
    """The refusal check is meaningful: an accepted write changes the state it compares."""
    before = h.state()
    h.run(lambda: h.t.kv.put("seen", "yes"))
    h.run(lambda: h.t.sessions.update(h.session.id, title="changed"))
    assert h.state() != before
