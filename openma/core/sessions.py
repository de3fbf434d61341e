"""``t.sessions``: the tenant's sessions, with their agents and environments frozen at creation.

A session is created from an agent and an environment that may live in other backends than the sessions
store (``STORE_BACKENDS`` places each store on its own). So the snapshot is taken here, through the
tenant's agents and environments stores, and handed to the sessions store as plain JSON: later edits of
the agent or environment never change a session that already runs.

The live tail (``subscribe``) and the inbox wait (``wait_pending``) are built here, once, by
:mod:`openma.core.tail` over the store's ``read_after``/``pending`` and its wake-ups. The rest is the sessions
store itself (:class:`~openma.ports.sessions.SessionStore`). Fenced writes belong to the session's actor
(``t.sessions.actor(...)``); the admin forms that write around it say so in their names
(``unfenced_append``, ``unfenced_set_status``, ``unfenced_promote``).
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

import attrs

from openma.core import tail, validate, wakeups
from openma.core.actor import SessionActor, acquire_actor
from openma.core.clock import Clock, SystemClock, ms_to_datetime
from openma.core.ids import check_id
from openma.core.orchestrator import SandboxOrchestrator
from openma.core.tail import EventTail
from openma.core.turns import DEFAULT_MAX_STEPS, TurnOptions, TurnResult, run_turn
from openma.core.turns.retry import RetryPolicy
from openma.core.usage import TenantUsage
from openma.errors import ConfigError, Conflict, InvalidInput, OpenmaError
from openma.models import Agent, Environment, Event, GcReport, InboxItem, Order, Page, Session, Stream
from openma.ports.agents import AgentStore
from openma.ports.environments import EnvironmentStore
from openma.ports.lease import LeaseLock
from openma.ports.model import Model
from openma.ports.sessions import UNSET, SessionStore
from openma.ports.sessions.runnable import ScheduledWakeup
from openma.ports.telemetry import NullTelemetry, Telemetry
from openma.ports.vaults import VaultStore

#: Picks the model for a session from its frozen agent snapshot (the agent's ``model``, resolved through settings);
#: it may return the model or an awaitable of it (an adapter that opens a client).
ModelResolver = Callable[[dict[str, Any]], Model | Awaitable[Model]]


def agent_snapshot(agent: Agent) -> dict[str, Any]:
    """What a session keeps of its agent: the definition at the version it was created with."""
    return {
        "id": agent.id,
        "version": agent.version,
        "name": agent.name,
        "model": agent.model,
        "system": agent.system,
        "description": agent.description,
        "tools": agent.tools,
        "mcp_servers": agent.mcp_servers,
        "skills": agent.skills,
        "metadata": agent.metadata,
    }


def environment_snapshot(environment: Environment) -> dict[str, Any]:
    """What a session keeps of its environment."""
    return {
        "id": environment.id,
        "name": environment.name,
        "description": environment.description,
        "config": environment.config,
        "metadata": environment.metadata,
    }


class Sessions:
    """The sessions of one tenant (``t.sessions``)."""

    def __init__(
        self,
        store: SessionStore,
        agents: AgentStore,
        environments: EnvironmentStore,
        *,
        lease_lock: LeaseLock | None = None,
        telemetry: Telemetry | None = None,
        sandboxes: Callable[[], Awaitable[SandboxOrchestrator]] | None = None,
        opened_sandboxes: Callable[[], SandboxOrchestrator | None] | None = None,
        vaults: Callable[[], VaultStore] | None = None,
        model_resolver: Callable[[], ModelResolver | None] | None = None,
        usage: Callable[[], TenantUsage] | None = None,
    ) -> None:
        self._store = store
        self._vaults = vaults
        self._agents = agents
        self._environments = environments
        self._lease_lock = lease_lock
        self._sandboxes = sandboxes
        self._opened_sandboxes = opened_sandboxes
        self._model_resolver = model_resolver
        self._usage = usage
        self._telemetry = telemetry or NullTelemetry()
        self._clock: Clock = SystemClock()
        self.tenant_id = store.tenant_id

    def __repr__(self) -> str:
        return f"Sessions(tenant_id={self.tenant_id!r})"

    @property
    def store(self) -> SessionStore:
        """The underlying sessions store."""
        return self._store

    # -- sessions

    async def create(
        self,
        *,
        agent_id: str,
        environment_id: str,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        vault_ids: Sequence[str] = (),
    ) -> Session:
        """A new ``idle`` session that freezes the agent and the environment as they are now.

        ``vault_ids`` name the tenant's vaults whose credentials the session may use: an unknown vault, or
        another tenant's, is ``NotFound``; an archived one is ``Conflict``.
        """
        agent = await self._agents.get(agent_id)
        if agent.archived_at is not None:
            raise Conflict(f"agent {agent_id} is archived; it cannot start sessions", agent_id=agent_id)
        environment = await self._environments.get(environment_id)
        if environment.archived_at is not None:
            raise Conflict(
                f"environment {environment_id} is archived; it cannot host sessions", environment_id=environment_id
            )
        if vault_ids:
            if self._vaults is None:
                raise ConfigError("these sessions have no vault store; vault_ids cannot be given")
            vaults = self._vaults()
            for vault_id in vault_ids if isinstance(vault_ids, list | tuple) else ():
                vault = await vaults.get(vault_id)
                if vault.archived_at is not None:
                    raise Conflict(f"vault {vault_id} is archived", vault_id=vault_id)
        return await self._store.create(
            agent_id=agent.id,
            environment_id=environment.id,
            agent_snapshot=agent_snapshot(agent),
            environment_snapshot=environment_snapshot(environment),
            title=title,
            metadata=metadata,
            vault_ids=vault_ids,
        )

    async def get(self, session_id: str) -> Session:
        return await self._store.get(session_id)

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        agent_id: str | None = None,
        environment_id: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[Session]:
        return await self._store.list(
            limit=limit,
            cursor=cursor,
            order=order,
            agent_id=agent_id,
            environment_id=environment_id,
            status=status,
            include_archived=include_archived,
            created_after=created_after,
            created_before=created_before,
        )

    async def update(
        self, session_id: str, *, title: str | None = UNSET, metadata: dict[str, Any] | None = None
    ) -> Session:
        return await self._store.update(session_id, title=title, metadata=metadata)

    async def archive(self, session_id: str) -> Session:
        return await self._store.archive(session_id)

    async def delete(self, session_id: str) -> None:
        """Delete the session with its log, inbox, streams and blobs; its sandbox, if any, is destroyed."""
        await self._store.delete(session_id)
        orchestrator = self._opened_sandboxes() if self._opened_sandboxes is not None else None
        if orchestrator is not None:
            await orchestrator.release(session_id, snapshot=False)

    async def unfenced_set_status(
        self,
        session_id: str,
        status: str,
        *,
        from_statuses: Iterable[str] | None = None,
        events: Sequence[dict[str, Any]] = (),
    ) -> tuple[Session, builtins.list[Event]]:
        """Move the session to ``status`` without its actor's lease (an admin or maintenance path): the
        transition is checked, but not fenced against a running actor. Actors use ``actor.set_status``."""
        return await self._store.set_status(session_id, status, from_statuses=from_statuses, events=events)

    # -- event log

    async def unfenced_append(self, session_id: str, events: Sequence[dict[str, Any]]) -> builtins.list[Event]:
        """Append events without the actor's lease (admin, import and maintenance paths; ids already logged
        are returned as stored). A session's actor appends with ``actor.append``, fenced by its epoch."""
        return await self._store.append(session_id, events)

    async def events(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        limit: int = 100,
        types: Sequence[str] | None = None,
        cursor: str | None = None,
        order: Order = "asc",
    ) -> Page[Event]:
        return await self._store.events(
            session_id, after=after, before=before, limit=limit, types=types, cursor=cursor, order=order
        )

    async def get_event(self, session_id: str, event_id: str) -> Event:
        return await self._store.get_event(session_id, event_id)

    def actor(self, session_id: str, *, wait: float = 0.0) -> AbstractAsyncContextManager[SessionActor]:
        """Become the session's only writer for an ``async with`` block (see :mod:`openma.core.actor`).

        Waits up to ``wait`` seconds for the current holder (``0``: fail at once) and raises ``SessionBusy``
        if it does not let go. If the previous holder died mid-turn, recovery runs before the block starts
        (``actor.recovery`` says what it did). ``wait`` is a finite number of seconds from 0 to a year:
        ``"1"``, ``True`` and NaN are ``InvalidInput``, raised here, before the ``async with``.
        """
        check_id(session_id, "ses", what="session_id")
        wait = validate.seconds(wait, "wait")
        if self._lease_lock is None:
            raise ConfigError("this sessions store has no lease lock; actors need a backend that provides one")
        return acquire_actor(
            self._store, self._lease_lock, session_id, wait=wait, telemetry=self._telemetry, sandboxes=self._sandboxes
        )

    async def run(
        self,
        session_id: str,
        *,
        model: Model | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        retry: RetryPolicy | None = None,
        wait: float = 10.0,
        options: TurnOptions | None = None,
    ) -> TurnResult:
        """Run one turn of the session as its actor: promote its inputs, then model ⇄ tools until it stops.

        ``stop_reason`` is ``end_turn``, ``requires_action`` (a custom tool's result or a tool confirmation is
        awaited: post it and ``run`` again, from any process), ``interrupted``, ``error`` (a model error
        that is not retryable, or retries that ran out; logged as ``session.error``) or ``max_steps``. See
        :mod:`openma.core.turns.loop`. ``model=None`` asks the platform's model resolver for the agent's
        model (``ConfigError`` without one). ``wait`` is how long to wait for the session's actor.
        """
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= 10_000:
            raise InvalidInput("max_steps must be an integer from 1 to 10000", field="max_steps")
        base = options or TurnOptions()
        options = attrs.evolve(base, max_steps=max_steps, retry=retry or base.retry)
        if (await self._store.get(session_id)).status == "terminated":  # before the actor: nothing to recover
            raise Conflict(f"session {session_id} is terminated; it runs no more turns", session_id=session_id)
        async with self.actor(session_id, wait=wait) as actor:
            return await self.run_held(actor, model=model, options=options)

    async def run_held(
        self, actor: SessionActor, *, model: Model | None = None, options: TurnOptions | None = None
    ) -> TurnResult:
        """:meth:`run` on an actor the caller already holds (what a worker does after claiming a session).

        When the turn ends, the session leaves the runnable index unless input arrived meanwhile (checked
        under the session row's lock, fenced by the actor's epoch).
        """
        session = await actor.session()
        if session.status == "terminated":
            raise Conflict(f"session {actor.session_id} is terminated; it runs no more turns", session_id=session.id)
        if model is None:
            resolver = self._model_resolver() if self._model_resolver is not None else None
            if resolver is None:
                raise ConfigError(
                    "no model given and this platform has no model resolver; pass model=... or open the "
                    "platform with model_resolver=..."
                )
            chosen = resolver(session.agent)
            model = await chosen if inspect.isawaitable(chosen) else chosen
        result = await run_turn(actor, model, telemetry=self._telemetry, options=options or TurnOptions())
        await actor.store.clear_runnable(actor.session_id, fence=actor.epoch)
        await self._record_usage(actor.session_id, result)
        return result

    async def _record_usage(self, session_id: str, result: TurnResult) -> None:
        """Record what the turn's events account for in the usage ledger, and the sandbox time metered so far.

        Derived from the logged events (keys are event ids), so it is a no-op for a turn recorded already; a
        failure is reported (``silent_catch``) and left to ``t.usage.backfill(session_id)``, never raised:
        the turn itself is done and logged.
        """
        if self._usage is None:
            return
        try:
            await self._usage().record_events(session_id, result.events)
            orchestrator = self._opened_sandboxes() if self._opened_sandboxes is not None else None
            flush = getattr(orchestrator, "flush_usage", None)
            if flush is not None:
                await flush()
        except OpenmaError as exc:
            self._telemetry.emit(
                "silent_catch",
                where="sessions.record_usage",
                error=type(exc).__name__,
                code=exc.code,
                tenant_id=self.tenant_id,
                session_id=session_id,
            )

    def subscribe(self, session_id: str, *, after: int = 0) -> EventTail:
        """Every event with ``seq > after``, in order, then new ones as they land (see :mod:`openma.core.tail`)."""
        return tail.subscribe(self._store, session_id, after=after)

    # -- wake-ups (see openma.core.wakeups)

    async def schedule_wakeup(
        self,
        session_id: str,
        *,
        at: datetime | None = None,
        delay: float | timedelta | None = None,
        every: float | timedelta | None = None,
        cron: str | None = None,
        prompt: str | None = None,
    ) -> ScheduledWakeup:
        """Wake the session later: once (``at`` or ``delay`` seconds), every ``every`` seconds (from ``at`` if
        given), or on a ``cron`` expression. When due, a worker posts a ``user.message`` with ``prompt`` (its
        ``metadata`` says which wake-up fired and when), exactly once per due time; a repeating one that was
        missed during downtime fires once. Logs ``span.wakeup_scheduled``."""
        now = ms_to_datetime(self._clock.now_ms())
        return await wakeups.schedule(
            self._store, session_id, now=now, at=at, delay=delay, every=every, cron=cron, prompt=prompt
        )

    async def list_wakeups(self, session_id: str) -> builtins.list[ScheduledWakeup]:
        """The session's scheduled wake-ups, soonest first."""
        return await self._store.list_wakeups(session_id)

    async def cancel_wakeup(self, session_id: str, wakeup_id: str) -> bool:
        """Remove a wake-up; False if it was already gone (cancelled, or a one-shot that fired)."""
        return await self._store.cancel_wakeup(session_id, wakeup_id)

    # -- inbox

    async def post(self, session_id: str, events: Sequence[dict[str, Any]]) -> builtins.list[InboxItem]:
        return await self._store.post(session_id, events)

    async def pending(self, session_id: str, *, limit: int = 100, cursor: str | None = None) -> Page[InboxItem]:
        """What waits in the inbox, oldest first, a page at a time."""
        return await self._store.pending(session_id, limit=limit, cursor=cursor)

    async def wait_pending(self, session_id: str, *, timeout: float, limit: int = 100) -> Page[InboxItem]:
        """``pending``, but wait up to ``timeout`` seconds for something to be posted when nothing waits."""
        return await tail.wait_pending(self._store, session_id, timeout=timeout, limit=limit)

    async def unfenced_promote(self, session_id: str, event_ids: Sequence[str]) -> builtins.list[Event]:
        """Promote inputs into the log without the actor's lease (admin path); actors use ``actor.promote``."""
        return await self._store.promote(session_id, event_ids)

    async def cancel(
        self, session_id: str, event_ids: Sequence[str] | None = None, *, fence: int | None = None
    ) -> builtins.list[InboxItem]:
        return await self._store.cancel(session_id, event_ids, fence=fence)

    # -- model streams

    async def open_stream(
        self,
        session_id: str,
        *,
        stream_id: str | None = None,
        message_id: str | None = None,
        kind: str = "message",
        fence: int | None = None,
    ) -> Stream:
        return await self._store.open_stream(
            session_id, stream_id=stream_id, message_id=message_id, kind=kind, fence=fence
        )

    async def append_stream(
        self, session_id: str, stream_id: str, chunks: Sequence[str], *, fence: int | None = None
    ) -> int:
        return await self._store.append_stream(session_id, stream_id, chunks, fence=fence)

    async def finalize_stream(
        self, session_id: str, stream_id: str, status: str, *, error: str | None = None, fence: int | None = None
    ) -> Stream:
        return await self._store.finalize_stream(session_id, stream_id, status, error=error, fence=fence)

    async def get_stream(self, session_id: str, stream_id: str) -> Stream:
        return await self._store.get_stream(session_id, stream_id)

    async def streams(
        self, session_id: str, *, status: str | None = "open", limit: int = 100, cursor: str | None = None
    ) -> Page[Stream]:
        """The session's model streams (``open`` ones by default), oldest first, a page at a time."""
        return await self._store.streams(session_id, status=status, limit=limit, cursor=cursor)

    async def prune_streams(
        self, session_id: str, *, older_than: datetime | None = None, fence: int | None = None
    ) -> int:
        return await self._store.prune_streams(session_id, older_than=older_than, fence=fence)

    # -- retention

    async def prune(
        self,
        session_id: str,
        *,
        before_seq: int | None = None,
        older_than: datetime | None = None,
        keep_last: int | None = None,
        batch_size: int = 1000,
    ) -> int:
        return await self._store.prune(
            session_id, before_seq=before_seq, older_than=older_than, keep_last=keep_last, batch_size=batch_size
        )

    async def gc(self, cutoff: datetime, *, batch_size: int = 1000, dry_run: bool = False) -> GcReport:
        if dry_run is not False:  # stores written before dry runs existed keep working for real passes
            return await self._store.gc(cutoff, batch_size=batch_size, dry_run=dry_run)
        return await self._store.gc(cutoff, batch_size=batch_size)
