"""The SessionActor: the one writer of a session, across tasks, processes and hosts.

Holding a session is a lease with an epoch:

1. take the session's lease lock (:mod:`openma.ports.lease`: a ``flock`` on SQLite, an advisory lock on a
   dedicated Postgres connection), waiting up to ``wait`` seconds or failing with ``SessionBusy``;
2. bump the session's ``lease_epoch`` and record this holder, in one transaction;
3. if the previous holder did not release cleanly, run :func:`~openma.core.recovery.recover_interrupted_state`
   and write its plan, fenced;
4. every write (append, inbox promotion, status change, stream open/chunk/finalize) passes the epoch as
   ``fence``, checked in the same transaction as the write: a holder that lost its lease (paused,
   partitioned, its lock connection dropped) is refused with ``LeaseLost`` and writes nothing;
5. on a clean exit, clear the holder and free the lock; on an exit by exception, free the lock but leave the
   holder recorded, so the next holder recovers whatever the failed turn left open. The lock is freed
   whatever happens on the way out (a cancellation, a failed idle snapshot, a failed recovery or write):
   that part runs shielded from cancellation, in a ``finally``.

The session's sandbox (:meth:`SessionActor.sandbox`) is fenced too: every operation on it checks the lease
first (``LeaseLost`` for a stale holder, reads included), and its snapshots and the provider's sandbox id are
recorded on the session row with the epoch checked in the same transaction.

Recovery keys off the lease, never off ``status='running'``: a turn that is live on another host holds the
lock, so nobody can acquire the session, let alone "recover" it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from openma.core.lifecycle import STATUS_EVENT, Status, check_status, sources_for
from openma.core.recovery import OpenStream, RecoveryPlan, recover_interrupted_state
from openma.core.sandbox_record import SessionSandboxIndex
from openma.errors import ConfigError, InvalidInput, LeaseLost
from openma.models import Event, Page, Session, Stream
from openma.ports.lease import LeaseHandle, LeaseLock
from openma.ports.sandbox import SandboxSpec
from openma.ports.sessions import SessionStore
from openma.ports.telemetry import Telemetry

if TYPE_CHECKING:
    from openma.core.orchestrator import OrchestratedSandbox, SandboxOrchestrator

#: The event types recovery needs to see (uses, their results, and the user's answers).
RECOVERY_TYPES = (
    "agent.tool_use",
    "agent.tool_result",
    "agent.mcp_tool_use",
    "agent.mcp_tool_result",
    "agent.custom_tool_use",
    "user.custom_tool_result",
    "user.tool_confirmation",
)


def holder_name() -> str:
    """Who this holder is, for people reading the session row: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SessionActor:
    """The lease holder of one session; every write it makes is fenced by its epoch."""

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        *,
        epoch: int,
        holder: str,
        handle: LeaseHandle,
        telemetry: Telemetry,
        recovery: RecoveryPlan | None = None,
        sandboxes: Callable[[], Awaitable[SandboxOrchestrator]] | None = None,
    ) -> None:
        self._store = store
        self.session_id = session_id
        self.epoch = epoch
        self.holder = holder
        self._handle = handle
        self._telemetry = telemetry
        #: What acquiring recovered (``None`` when the previous holder released cleanly).
        self.recovery = recovery
        self._lost = False
        self._released = False
        self._sandboxes = sandboxes
        self._sandbox: OrchestratedSandbox | None = None

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self._lost else "held"
        return f"SessionActor({self.session_id!r}, epoch={self.epoch}, {state})"

    @property
    def tenant_id(self) -> str:
        """The tenant of the session this actor holds."""
        return self._store.tenant_id

    @property
    def store(self) -> SessionStore:
        """The sessions store this actor writes through (reads and wake-ups; writes go through the actor)."""
        return self._store

    @property
    def held(self) -> bool:
        """True while this actor may still write (it may still be refused if it lost the lease unseen)."""
        return not (self._lost or self._released) and self._handle.alive()

    def _check(self) -> int:
        if self._released:
            raise LeaseLost(f"the actor of session {self.session_id} was released", session_id=self.session_id)
        if self._lost or not self._handle.alive():
            self._lost = True
            raise LeaseLost(
                f"the actor of session {self.session_id} lost its lease (epoch {self.epoch})",
                session_id=self.session_id,
                epoch=self.epoch,
            )
        return self.epoch

    async def _fenced(self, call: Any) -> Any:
        try:
            return await call
        except LeaseLost:
            self._lost = True
            raise

    # -- writes (fenced)

    async def append(self, events: Sequence[dict[str, Any]]) -> list[Event]:
        """Append events to the log (ids already logged are returned as stored, not written again)."""
        return await self._fenced(self._store.append(self.session_id, events, fence=self._check()))  # type: ignore[no-any-return]

    async def promote(self, *, limit: int = 100) -> list[Event]:
        """Move queued inputs into the log, first in first out, exactly once.

        A ``user.interrupt`` cancels every input queued before it (they are stale once the user interrupted)
        and is itself logged; inputs posted after it are promoted after it.
        """
        fence = self._check()
        pending = (await self._store.pending(self.session_id, limit=limit)).items
        if not pending:
            return []
        interrupts = [i for i, item in enumerate(pending) if item.type == "user.interrupt"]
        promote = [item.event_id for item in pending]
        if interrupts:
            last = interrupts[-1]
            stale = [item.event_id for item in pending[:last] if item.type != "user.interrupt"]
            if stale:
                await self._fenced(self._store.cancel(self.session_id, stale, fence=fence))
            promote = [item.event_id for item in pending if item.event_id not in set(stale)]
        events: list[Event] = await self._fenced(self._store.promote(self.session_id, promote, fence=fence))
        return events

    async def set_status(self, status: Status, **fields: Any) -> Session:
        """Move the session to ``status`` (a validated transition) and log its ``session.status_*`` event."""
        target = check_status(status)
        fence = self._check()
        event = {"type": STATUS_EVENT[target], **fields}
        before = time.perf_counter()
        session, _ = await self._fenced(
            self._store.set_status(
                self.session_id, target, from_statuses=sources_for(target), events=[event], fence=fence
            )
        )
        self._telemetry.emit(
            "session.lifecycle",
            tenant_id=self._store.tenant_id,
            session_id=self.session_id,
            status=target,
            epoch=self.epoch,
            duration_ms=round((time.perf_counter() - before) * 1000, 3),
        )
        return session  # type: ignore[no-any-return]

    async def open_stream(self, *, message_id: str | None = None, kind: str = "message") -> Stream:
        return await self._fenced(  # type: ignore[no-any-return]
            self._store.open_stream(self.session_id, message_id=message_id, kind=kind, fence=self._check())
        )

    async def append_stream(self, stream_id: str, chunks: Sequence[str]) -> int:
        return await self._fenced(  # type: ignore[no-any-return]
            self._store.append_stream(self.session_id, stream_id, chunks, fence=self._check())
        )

    async def finalize_stream(self, stream_id: str, status: str, *, error: str | None = None) -> Stream:
        return await self._fenced(  # type: ignore[no-any-return]
            self._store.finalize_stream(self.session_id, stream_id, status, error=error, fence=self._check())
        )

    # -- the session's sandbox

    async def check_lease(self) -> None:
        """``LeaseLost`` unless this actor still holds the session: checked here and in the store (the
        session's epoch), so a holder that lost its lease unseen is caught too."""
        fence = self._check()
        await self._fenced(SessionSandboxIndex(self._store, self.session_id, fence).check())

    async def sandbox(self) -> OrchestratedSandbox:
        """This session's sandbox, warmed on first use (reattached, or created with its latest snapshot).

        It is built from the session's environment as frozen at creation: ``config["image"]``,
        ``config["env"]`` and ``config["sandbox"]`` (provider options). Every operation on it checks this
        actor's lease first, and its snapshots and sandbox id are recorded on the session row, fenced. When
        the actor is released, the workspace is snapshotted (the orchestrator's ``idle_snapshot``) and the
        sandbox kept for the next turn.
        """
        self._check()
        if self._sandbox is not None:
            return self._sandbox
        if self._sandboxes is None:
            raise ConfigError("this actor has no sandbox orchestrator (open it through a Platform)")
        session = await self._store.get(self.session_id)
        config = session.environment.get("config") or {}
        env = config.get("env") or {}
        options = config.get("sandbox") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidInput("environment config 'env' must map names to strings", field="env")
        if not isinstance(options, dict):
            raise InvalidInput("environment config 'sandbox' must be an object", field="sandbox")
        image = config.get("image")
        spec = SandboxSpec(
            tenant_id=self._store.tenant_id,
            session_id=self.session_id,
            image=image if isinstance(image, str) else None,
            env=env,
            labels={"openma_environment": str(session.environment_id)},
            options=options,
        )
        orchestrator = await self._sandboxes()
        index = SessionSandboxIndex(self._store, self.session_id, self.epoch, legacy=orchestrator.index)
        self._sandbox = await self._fenced(
            orchestrator.get(self._store.tenant_id, self.session_id, spec, index=index, guard=self.check_lease)
        )
        return self._sandbox

    # -- reads (no fence needed)

    async def session(self) -> Session:
        return await self._store.get(self.session_id)

    async def events(self, *, after: int = 0, limit: int = 100, types: Sequence[str] | None = None) -> Page[Event]:
        return await self._store.events(self.session_id, after=after, limit=limit, types=types)

    # -- lifetime

    async def release(self, *, clean: bool = True) -> None:
        """Free the lease. ``clean=False`` leaves the holder recorded, so the next holder runs recovery.

        The idle snapshot comes first and may fail or be cancelled (it is reported, and the previous snapshot
        stays the latest); freeing the lock runs shielded in a ``finally`` and always happens.
        """
        if self._released:
            return
        self._released = True
        try:
            if self._sandbox is not None and self._sandboxes is not None and not self._lost:
                try:
                    await (await self._sandboxes()).idle(self.session_id)
                except Exception as exc:  # a failed idle snapshot must not keep the lease held
                    self._silent("actor.release.idle_snapshot", exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._free(clean)

    async def _free(self, clean: bool) -> None:
        try:
            if clean and not self._lost and self._handle.alive():
                await self._store.drop_lease(self.session_id, self.epoch)
        finally:
            try:
                await self._handle.release()
            finally:
                self._telemetry.emit(
                    "session.lifecycle",
                    tenant_id=self._store.tenant_id,
                    session_id=self.session_id,
                    action="released",
                    clean=clean,
                    epoch=self.epoch,
                )

    def _silent(self, where: str, exc: BaseException) -> None:
        self._telemetry.emit(
            "silent_catch",
            where=where,
            error=type(exc).__name__,
            code=getattr(exc, "code", None),
            message=str(exc)[:300],
            session_id=self.session_id,
        )


async def _read_all(store: SessionStore, session: Session) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = max(0, session.first_seq - 1)
    while True:
        page = await store.events(session.id, after=after, limit=500, types=RECOVERY_TYPES)
        out.extend(e.data for e in page)
        if len(page) < 500:
            return out
        after = page.items[-1].seq


async def _open_streams(store: SessionStore, session_id: str) -> list[Stream]:
    """Every open stream of the session, page after page."""
    out: list[Stream] = []
    cursor: str | None = None
    while True:
        page = await store.streams(session_id, status="open", limit=1000, cursor=cursor)
        out.extend(page.items)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def _recover(actor: SessionActor, store: SessionStore, status: str) -> RecoveryPlan:
    session = await store.get(actor.session_id)
    streams = await _open_streams(store, actor.session_id)
    plan = recover_interrupted_state(
        actor.session_id,
        await _read_all(store, session),
        [OpenStream(s.id, s.text, int(s.started_at.timestamp() * 1000), s.message_id) for s in streams],
        status=status,
    )
    if plan.empty:
        return plan
    status_events = [e for e in plan.events if e["type"] == STATUS_EVENT["idle"]]
    body = [e for e in plan.events if e["type"] != STATUS_EVENT["idle"]]
    if body:
        await actor.append(body)
    for stream_id in plan.finalize_streams:
        await actor.finalize_stream(stream_id, "interrupted")
    if plan.new_status is not None:
        fence = actor._check()
        await actor._fenced(
            store.set_status(
                actor.session_id, "idle", from_statuses=("running", "rescheduling"), events=status_events, fence=fence
            )
        )
    return plan


@asynccontextmanager
async def acquire_actor(
    store: SessionStore,
    lock: LeaseLock,
    session_id: str,
    *,
    wait: float = 0.0,
    telemetry: Telemetry,
    holder: str | None = None,
    sandboxes: Callable[[], Awaitable[SandboxOrchestrator]] | None = None,
) -> AsyncIterator[SessionActor]:
    """Hold ``session_id``'s lease for the ``async with`` block (see the module docstring)."""
    await store.get(session_id)  # NotFound / InvalidInput before touching any lock
    started = time.perf_counter()
    handle = await lock.acquire(f"{store.tenant_id}/{session_id}", wait=wait)
    holder = holder or holder_name()
    try:
        grant = await store.take_lease(session_id, holder)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await handle.release()
        raise
    actor = SessionActor(
        store, session_id, epoch=grant.epoch, holder=holder, handle=handle, telemetry=telemetry, sandboxes=sandboxes
    )
    clean = False
    try:
        telemetry.emit(
            "session.lifecycle",
            tenant_id=store.tenant_id,
            session_id=session_id,
            action="acquired",
            epoch=grant.epoch,
            waited_ms=round((time.perf_counter() - started) * 1000, 3),
            previous_holder=grant.previous_holder,
        )
        if grant.previous_holder is not None:
            plan = await _recover(actor, store, grant.status)
            actor.recovery = plan
            telemetry.emit(
                "recovery",
                tenant_id=store.tenant_id,
                session_id=session_id,
                previous_holder=grant.previous_holder,
                epoch=grant.epoch,
                finalized_streams=plan.finalized_streams,
                injected_tool_results=plan.injected_tool_results,
                injected_mcp_tool_results=plan.injected_mcp_tool_results,
                waiting_on_user=len(plan.waiting_on_user),
                new_status=plan.new_status,
            )
        yield actor
        clean = True
    finally:
        await actor.release(clean=clean)
