"""What every part of the SQL sessions store shares: one :class:`SessionContext` (client, tenant, clock, blobs,
wake-ups, spill settings, telemetry) with the helpers the parts call, and the row mapping and argument checks.

Each port of :mod:`openma.ports.sessions` is one part class in its own module, built on the same context
(:class:`SessionPart`); nothing here is private to one module, and no part imports another's internals.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

import anyio

from openma.adapters.sql.engine import SqlEngine
from openma.adapters.sql.wakeups import SessionWakeups
from openma.core import events as ev
from openma.core import validate
from openma.core.clock import Clock, SystemClock, ms_to_datetime
from openma.core.ids import check_id
from openma.core.jsonutil import MAX_JSON_DEPTH, check_json_object, dumps, loads, loads_all
from openma.errors import (
    Conflict,
    InvalidInput,
    LeaseLost,
    NotFound,
    OpenmaError,
    ResyncRequired,
    SpillIntegrityError,
)
from openma.models import Event, Session, Stream, event_from_row
from openma.ports.blobs import BlobStore
from openma.ports.sql import Row, SqlClient, Statement, TupleRow
from openma.ports.telemetry import NullTelemetry, Telemetry
from openma.ports.tenancy import TenantRef

MAX_TITLE: Final = 500
MAX_SNAPSHOT_BYTES: Final = 2_000_000
MAX_EVENTS_LIMIT: Final = 1000
MAX_STREAM_ERROR: Final = 10_000
#: Retries of a write that keeps colliding with concurrent writers of the same ids.
WRITE_RETRIES: Final = 8
#: Spilled blobs fetched at once while reading a page.
BLOB_CONCURRENCY: Final = 8
DEFAULT_BATCH: Final = 1000
MAX_BATCH: Final = 10_000
#: A seq above any real one ("everything").
ALL_SEQS: Final = 2**62

EVENT_COLUMNS: Final = "seq, event_id, type, data, blob_key, created_at"
EVENT_NAMES: Final = tuple(EVENT_COLUMNS.split(", "))
_E_COLUMNS: Final = ", ".join(f"e.{name}" for name in EVENT_NAMES)  # the same, of a source aliased ``e``
INSERT_EVENT: Final = (
    "INSERT INTO session_events (tenant_id, session_id, seq, event_id, type, data, blob_key, created_at) "
)


class Item(NamedTuple):
    """An event or input ready for its row: stored text (the JSON, or a spill stub) and the full payload.

    A named tuple (one per event on the append path; cheaper to build than an ``attrs`` class).
    """

    id: str
    type: str
    text: str
    key: str | None
    data: dict[str, Any]


@functools.lru_cache(maxsize=64)
def values_sql(count: int) -> str:
    """``(?, ?, ?, ?, ?)`` rows for ``count`` items (the same string object each time: a cached statement key)."""
    return ", ".join(["(?, ?, ?, ?, ?)"] * count)


def check_fence(fence: object) -> int | None:
    if fence is None:
        return None
    if isinstance(fence, bool) or not isinstance(fence, int) or not 0 <= fence <= ALL_SEQS:
        raise InvalidInput(f"fence must be a lease epoch (an integer between 0 and {ALL_SEQS}) or None", field="fence")
    return fence


def seq_arg(value: object, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= ALL_SEQS:
        raise InvalidInput(f"{what} must be an integer between {minimum} and {ALL_SEQS}", field=what)
    return value


def batch_arg(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise InvalidInput(f"batch_size must be an integer between 1 and {MAX_BATCH}", field="batch_size")
    return value


def check_title(value: object) -> str | None:
    if value is None:
        return None
    return validate.text(value, "title", max_len=MAX_TITLE)


def snapshot_text(value: object, what: str) -> str:
    # A snapshot embeds checked values one level down (an agent's tools), so it may nest one level deeper.
    snapshot = check_json_object(value, what=what)
    text = dumps(snapshot, what=what, max_depth=MAX_JSON_DEPTH + 1)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode (lone surrogate)", field=what) from None
    if size > MAX_SNAPSHOT_BYTES:
        raise InvalidInput(f"{what} is too large ({size} > {MAX_SNAPSHOT_BYTES} bytes)", field=what)
    return text


def placeholders(n: int) -> str:
    return ", ".join(["?"] * n)


def session_of(row: Row) -> Session:
    return Session(
        id=row["id"],
        tenant_id=row["tenant_id"],
        agent_id=row["agent_id"],
        environment_id=row["environment_id"],
        title=row["title"],
        metadata=loads(row["metadata"]),
        status=row["status"],
        agent=loads(row["agent_snapshot"]),
        environment=loads(row["environment_snapshot"]),
        last_seq=int(row["last_seq"]),
        first_seq=int(row["retained_from_seq"]),
        created_at=ms_to_datetime(row["created_at"]),
        updated_at=ms_to_datetime(row["updated_at"]),
        archived_at=ms_to_datetime(row["archived_at"]) if row["archived_at"] is not None else None,
        vault_ids=loads(row["vault_ids"]),
    )


def stream_of(row: Row, text: str) -> Stream:
    return Stream(
        id=row["id"],
        session_id=row["session_id"],
        kind=row["kind"],
        status=row["status"],
        message_id=row["message_id"],
        text=text,
        chunks=int(row["chunks"]),
        started_at=ms_to_datetime(row["started_at"]),
        finished_at=ms_to_datetime(row["finished_at"]) if row["finished_at"] is not None else None,
        error=row["error"],
    )


class SessionContext:
    """State and helpers shared by the parts of one tenant's sessions store."""

    def __init__(
        self,
        client: SqlClient,
        tenant: TenantRef,
        clock: Clock | None = None,
        *,
        wakeups: SessionWakeups | None = None,
        blobs: BlobStore | None = None,
        spill_bytes: int = 500_000,
        max_event_bytes: int = ev.MAX_EVENT_BYTES,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.db = client
        self.tenant = tenant
        self.tenant_id = tenant.tenant_id
        self.clock = clock or SystemClock()
        self.wakeups = wakeups or SessionWakeups(client)
        self.blobs = blobs
        self.spill_bytes = spill_bytes
        self.max_event_bytes = min(max_event_bytes, ev.MAX_EVENT_BYTES)  # a fixed cap, whatever spill_bytes is
        #: The engine's hooks (one-statement append, notifications), through the shared wake-ups.
        self.engine = self.wakeups.engine
        #: Whether the engine has a one-statement append (it overrides the hook, whose default says "no"): the
        #: log then builds the statement's dedup guard, which the portable unit does not use.
        hook = getattr(type(self.engine), "fenced_append_statement", None)
        self.one_statement_append = hook is not SqlEngine.fenced_append_statement
        #: Where failures this store recovers from are reported (``silent_catch``).
        self.telemetry: Telemetry = telemetry or NullTelemetry()

    def __repr__(self) -> str:
        return f"SessionContext(tenant_id={self.tenant_id!r})"

    async def row(self, session_id: str) -> Row:
        check_id(session_id, "ses", what="session_id")
        row = await self.db.fetch_one(
            "SELECT * FROM sessions WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL",
            (self.tenant_id, session_id),
        )
        if row is None:
            raise NotFound(f"session {session_id} not found", session_id=session_id)
        return row

    async def spill(self, session_id: str, prepared: Sequence[ev.PreparedEvent]) -> tuple[list[Item], list[str]]:
        """Write the blobs of the events above the threshold; return the rows to store and the keys written.

        The tenant is checked first, so a tenant that may not write (archived, unknown) is refused the same
        way whether or not an event spills, and before any blob exists.
        """
        await self.tenant.ensure()
        limit = self.spill_bytes
        big = [p for p in prepared if len(p.body) > limit]
        if not big:  # the common case: nothing to spill, every row keeps its JSON
            return [Item(p.id, p.type, p.text, None, p.data) for p in prepared], []
        if self.blobs is None:
            raise InvalidInput(
                f"event {big[0].id} is {big[0].size} bytes, over the spill threshold ({self.spill_bytes} bytes), "
                "and this store has no blob store to spill it to",
                field="events",
            )
        items: list[Item] = []
        written: list[str] = []
        try:
            for p in prepared:
                if len(p.body) > limit:
                    assert self.blobs is not None
                    spill = ev.spill_key(session_id, p)
                    await self.blobs.put(spill.key, p.body, content_type=ev.SPILL_CONTENT_TYPE)
                    written.append(spill.key)
                    items.append(Item(p.id, p.type, spill.stub(p.id, p.type), spill.key, p.data))
                else:
                    items.append(Item(p.id, p.type, p.text, None, p.data))
        except BaseException:
            await self.drop_blobs(written)
            raise
        return items, written

    async def drop_blobs(self, keys: Iterable[str]) -> int:
        """Delete blobs, best effort and shielded (used on paths that are already failing or cleaning up).

        A delete that fails is left for the session's sweep and reported as ``silent_catch`` telemetry.
        """
        keys = list(dict.fromkeys(keys))
        if not keys or self.blobs is None:
            return 0
        done = 0
        with anyio.CancelScope(shield=True):
            for key in keys:
                try:
                    await self.blobs.delete(key)
                    done += 1
                except Exception as exc:  # an orphan blob is swept with its session; never mask the real outcome
                    self.telemetry.emit(
                        "silent_catch",
                        where="sessions.drop_blobs",
                        error=type(exc).__name__,
                        code=getattr(exc, "code", None),
                        message=str(exc)[:300],
                        tenant_id=self.tenant_id,
                        key=key,
                    )
        return done

    def values(self, items: Sequence[Item]) -> tuple[str, list[Any]]:
        values = values_sql(len(items))
        params: list[Any] = []
        extend = params.extend
        for k, it in enumerate(items, 1):
            extend((k, it.id, it.type, it.text, it.key))
        return values, params

    async def refusal(
        self, session_id: str, fence: int | None, status: tuple[str, tuple[str, ...]] | None = None
    ) -> OpenmaError | None:
        """Why a fenced or conditional unit wrote nothing (``None``: already in the target status)."""
        row = await self.db.fetch_one(
            "SELECT status, lease_epoch, archived_at, deleted_at FROM sessions WHERE tenant_id = ? AND id = ?",
            (self.tenant_id, session_id),
        )
        if row is None or row["deleted_at"] is not None:
            return NotFound(f"session {session_id} not found", session_id=session_id)
        if fence is not None and int(row["lease_epoch"]) != fence:
            return LeaseLost(
                f"session {session_id}: lease epoch {fence} is stale (now {row['lease_epoch']}); nothing was written",
                session_id=session_id,
                fence=fence,
                epoch=int(row["lease_epoch"]),
            )
        if status is not None and row["status"] not in status[1]:
            if row["status"] == status[0]:
                return None
            return Conflict(
                f"session {session_id} is {row['status']!r}; {status[0]!r} is entered from {', '.join(status[1])}",
                session_id=session_id,
                status=row["status"],
                target=status[0],
            )
        return Conflict(f"session {session_id} changed during the write; retry", session_id=session_id)

    async def fetch_blobs(self, keys: Sequence[tuple[str, str]]) -> dict[str, bytes | None]:
        """The bytes of spilled events' blobs (``None`` where missing), by key; ``keys`` are (event id, key)."""
        out: dict[str, bytes | None] = {}
        if not keys:
            return out
        if self.blobs is None:
            event_id, key = keys[0]
            raise SpillIntegrityError(
                f"event {event_id} was spilled to {key!r} but this store has no blob store to read it from",
                event_id=event_id,
                key=key,
                reason="no_blob_store",
            )
        blobs = self.blobs

        async def one(key: str) -> None:
            try:
                out[key] = await blobs.get(key)
            except NotFound:
                out[key] = None

        unique = list(dict.fromkeys(k for _, k in keys))
        if len(unique) == 1:
            await one(unique[0])
            return out
        limiter = anyio.CapacityLimiter(BLOB_CONCURRENCY)

        async def limited(key: str) -> None:
            async with limiter:
                await one(key)

        async with anyio.create_task_group() as tg:
            for key in unique:
                tg.start_soon(limited, key)
        return out

    async def hydrate(self, rows: Sequence[Row]) -> list[tuple[Row, dict[str, Any]]]:
        """Each row with its payload, spilled ones read back from the blob store and verified."""
        parsed = [(r, loads(r["data"])) for r in rows]
        spills = {
            r["event_id"]: ev.stub_spill(r["event_id"], data, r["blob_key"])
            for r, data in parsed
            if r["blob_key"] is not None
        }
        fetched = await self.fetch_blobs([(eid, s.key) for eid, s in spills.items()])
        out = []
        for r, data in parsed:
            spill = spills.get(r["event_id"]) if r["blob_key"] is not None else None
            if spill is not None:
                data = ev.rehydrate(r["event_id"], r["type"], spill, fetched.get(spill.key))
            out.append((r, data))
        return out

    async def to_events(self, rows: Sequence[Row]) -> list[Event]:
        """The rows as :class:`Event` objects, spilled payloads read back (and verified) from the blob store."""
        times: dict[int, datetime] = {}  # events of one append share their time: build each datetime once
        out: list[Event] = []
        add = out.append
        for r in rows:
            if r["blob_key"] is not None:
                break
        else:  # the common page: no spilled event, one pass (the JSON is parsed as the event is built)
            for r in rows:
                ms = r["created_at"]
                at = times.get(ms)
                if at is None:
                    at = times[ms] = ms_to_datetime(ms)
                add(Event(r["event_id"], r["type"], int(r["seq"]), at, loads(r["data"])))
            return out
        for r, data in await self.hydrate(rows):
            ms = r["created_at"]
            at = times.get(ms)
            if at is None:
                at = times[ms] = ms_to_datetime(ms)
            add(Event(r["event_id"], r["type"], int(r["seq"]), at, data))
        return out

    async def page_events(self, rows: Sequence[TupleRow]) -> list[Event]:
        """Like :meth:`to_events`, for rows fetched as tuples that start with the columns of ``EVENT_COLUMNS``.

        The read path: a page of tuples (no ``dict`` per row) becomes its events in one pass; a page that holds
        a spilled event takes :meth:`to_events` (its blobs are read back and verified).
        """
        if any(r[4] is not None for r in rows):
            return await self.to_events([dict(zip(EVENT_NAMES, r, strict=False)) for r in rows])
        times: dict[int, datetime] = {}  # events of one append share their time: build each datetime once
        out: list[Event] = []
        add = out.append
        build = event_from_row
        for r, data in zip(rows, loads_all([r[3] for r in rows]), strict=True):  # indexed, not unpacked
            ms = r[5]
            at = times.get(ms)
            if at is None:
                at = times[ms] = ms_to_datetime(ms)
            add(build(r[1], r[2], int(r[0]), at, data))
        return out

    async def events_by_id(self, session_id: str, ids: Sequence[str]) -> dict[str, tuple[Event, str | None]]:
        if not ids:
            return {}
        # Through the engine's lookup by id, which on Postgres only the event-id index can serve.
        source, params = self.engine.event_id_rows("session_events", "e", self.tenant_id, session_id, ids)
        rows = await self.db.fetch_all(f"SELECT {_E_COLUMNS} FROM {source}", params)
        events = await self.to_events(rows)
        return {e.id: (e, r["blob_key"]) for e, r in zip(events, rows, strict=True)}

    @staticmethod
    def resync(session_id: str, after: int, retained_from: int) -> ResyncRequired:
        return ResyncRequired(
            f"session {session_id}: events after seq {after} up to {retained_from - 1} were removed by retention; "
            f"resync, then read from after={retained_from - 1}",
            retained_from=retained_from,
            session_id=session_id,
            after=after,
        )

    def fence_statement(self, session_id: str, fence: int | None) -> Statement:
        """Lock the session row (and check the epoch): the first statement of a fenced unit."""
        fence_sql, fence_params = (" AND lease_epoch = ?", [fence]) if fence is not None else ("", [])
        return Statement(
            f"UPDATE sessions SET lease_epoch = lease_epoch WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL"
            f"{fence_sql}",
            (self.tenant_id, session_id, *fence_params),
            expect_rows=True,
        )


class SessionPart:
    """One part of the store (one port): holds the shared context; ``tenant_id`` is the context's."""

    def __init__(self, ctx: SessionContext) -> None:
        self._ctx = ctx
        self.tenant_id = ctx.tenant_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tenant_id={self.tenant_id!r})"
