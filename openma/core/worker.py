"""``openma.Worker``: runs every session that has something to do, on one host or many.

A worker loops over the backend's runnable index (:class:`~openma.ports.sessions.runnable.RunnableIndex`):

1. **Wake-ups.** It fires the wake-ups that fell due (:func:`openma.core.wakeups.fire`): each posts its
   message (which makes the session runnable) and claims its due time with a conditional update, so a due
   time fires once whichever worker gets there.
2. **Claims.** It reads the runnable sessions, longest waiting first, and starts a turn for as many as it
   has free slots (``concurrency``), picked at random from that window so that workers sharing a backend
   do not all contend for the same head of the queue. Each turn takes the session's actor **fail-fast**: a
   session another worker (or host) holds is ``SessionBusy`` and skipped, never run twice. Under the lease,
   the session is run only if it is still runnable (another worker may have finished it since the read).
   Acquiring runs recovery when the previous holder died, so a killed worker's sessions (their runnable
   mark outlives it) are recovered and finished by whoever claims them next.
3. **Loop.** A turn ends by clearing the session's mark unless input arrived meanwhile, so a session that
   stays runnable is claimed again on the next pass. A turn that failed keeps its mark and is retried after
   a backoff (doubling per failure of that session). The store being down (``StorageUnavailable``, say while
   Postgres restarts) or the lease lost mid-turn is such a failure (``worker.turn`` outcome ``retry``): the
   next holder recovers what the turn left open and runs it again; input already promoted is in the log
   and is not promoted twice.
4. **Sleep.** With nothing to do it sleeps until a post or a new schedule wakes it (Postgres ``LISTEN``
   across processes; in-process notifications everywhere), the next wake-up falls due, or the poll interval
   passes (what covers other processes on SQLite).

**Stopping.** :meth:`Worker.stop` stops claiming; the turns in progress get ``drain_timeout`` seconds to
finish, then they are cancelled: their actors are released uncleanly, their sessions stay runnable, and the
next holder recovers them (handed back, never lost). ``async with Worker(...)`` runs the worker in the
background and drains on exit; ``await worker.run()`` runs it in the foreground until cancelled or stopped.
"""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs
from anyio.abc import TaskGroup

from openma.core import wakeups
from openma.core.turns import DEFAULT_MAX_STEPS, TurnOptions
from openma.errors import ConfigError, Conflict, InvalidInput, LeaseLost, NotFound, SessionBusy, StorageUnavailable
from openma.models import Value
from openma.ports.model import Model
from openma.ports.sessions.runnable import RunnableIndex
from openma.ports.telemetry import Telemetry

if TYPE_CHECKING:
    from openma.core.sessions import Sessions
    from openma.platform import Platform

#: How long a session another worker holds is left alone before this one tries it again.
BUSY_BACKOFF: Final = 0.25
#: Backoff after a failed turn (doubling per failure of that session), and after a failed pass.
ERROR_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0
MAX_WINDOW: Final = 1000


@attrs.frozen
class WorkerState(Value):
    """What a worker is doing (``worker.state``): its turns in progress and its counters since it started."""

    #: ``"tenant_id/session_id"`` of each turn in progress.
    running: tuple[str, ...]
    concurrency: int
    #: Turns started (sessions claimed), turns finished, turns that failed, sessions skipped as busy.
    claimed: int
    processed: int
    errors: int
    busy: int
    #: Wake-ups this worker fired (it won the due time).
    wakeups_fired: int
    #: ``idle`` | ``running`` | ``stopping`` | ``stopped``
    status: str


def runnable_index_of(platform: Platform) -> RunnableIndex:
    """The runnable index of the backend that holds the platform's sessions (``ConfigError`` without one)."""
    backend = platform.backend("sessions")
    factory = getattr(backend, "runnable_index", None)
    if factory is None:
        raise ConfigError(f"the sessions backend {backend.name!r} has no runnable index; workers cannot use it")
    index: RunnableIndex = factory(platform.settings)
    return index


def _positive(value: object, what: str, *, integer: bool = False, maximum: float = 86400.0) -> Any:
    number = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not number or not isinstance(value, int | float):
        in_range = False
    else:
        in_range = math.isfinite(value) and 0 < value <= maximum
    if not in_range:
        kind = "integer" if integer else "number"
        raise InvalidInput(f"{what} must be a positive {kind} up to {maximum:g}", field=what)
    return value


class Worker:
    """Runs turns for runnable sessions of every tenant, up to ``concurrency`` at once (see the module docstring).

    ``model`` runs every turn (``None``: the platform's model resolver picks each session's agent model).
    ``poll_interval`` bounds each idle sleep (default: the backend's; 0.2 s on SQLite, a long guard on
    Postgres with a healthy ``LISTEN``). ``drain_timeout`` is how long :meth:`stop` lets turns finish.
    """

    def __init__(
        self,
        platform: Platform,
        *,
        model: Model | None = None,
        concurrency: int = 8,
        max_steps: int = DEFAULT_MAX_STEPS,
        options: TurnOptions | None = None,
        drain_timeout: float = 30.0,
        poll_interval: float | None = None,
    ) -> None:
        self._platform = platform
        self._model = model
        self.concurrency: int = _positive(concurrency, "concurrency", integer=True, maximum=10_000)
        self._drain_timeout: float = _positive(drain_timeout, "drain_timeout")
        self._poll: float | None = None if poll_interval is None else _positive(poll_interval, "poll_interval")
        base = options or TurnOptions()
        self._options = attrs.evolve(base, max_steps=_positive(max_steps, "max_steps", integer=True, maximum=10_000))
        self._index = runnable_index_of(platform)
        self._telemetry: Telemetry = platform.telemetry
        self._sessions: dict[str, Sessions] = {}
        self._running: set[tuple[str, str]] = set()
        self._backoff: dict[tuple[str, str], tuple[float, int]] = {}
        self._kick = anyio.Event()
        self._stopping = False
        self._status = "idle"
        self._counts = {"claimed": 0, "processed": 0, "errors": 0, "busy": 0, "wakeups_fired": 0}
        self._passes = 0
        self._last_idle_pass = -1
        self._deferred = False
        self._task_group: TaskGroup | None = None
        self._done = anyio.Event()

    def __repr__(self) -> str:
        s = self.state
        return (
            f"Worker({s.status}, running={len(s.running)}/{s.concurrency}, claimed={s.claimed}, "
            f"processed={s.processed}, errors={s.errors}, wakeups_fired={s.wakeups_fired})"
        )

    @property
    def state(self) -> WorkerState:
        return WorkerState(
            running=tuple(sorted(f"{t}/{s}" for t, s in self._running)),
            concurrency=self.concurrency,
            status=self._status,
            **self._counts,
        )

    # -- lifetime

    async def __aenter__(self) -> Worker:
        if self._status != "idle":
            raise ConfigError("a worker runs once; make a new Worker to run again")
        self._status = "running"
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._serve)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self.stop()
        assert self._task_group is not None
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None

    async def run(self) -> None:
        """Run in the foreground until cancelled (turns in progress are handed back) or :meth:`stop`ped."""
        if self._status != "idle":
            raise ConfigError("a worker runs once; make a new Worker to run again")
        self._status = "running"
        await self._serve()

    def stop(self) -> None:
        """Stop claiming; turns in progress get ``drain_timeout`` seconds, then are handed back. Idempotent."""
        if not self._stopping:
            self._stopping = True
            if self._status == "running":
                self._status = "stopping"
        self._kick.set()

    async def wait_stopped(self) -> None:
        """Wait until the worker has stopped (after :meth:`stop`, once its turns drained or were handed back)."""
        await self._done.wait()

    async def wait_idle(self, *, timeout: float = 60.0) -> None:
        """Wait until a pass that started after this call found nothing to do and no turn is running
        (``TimeoutError`` after ``timeout`` seconds). For tests, scripts and graceful hand-offs."""
        target = self._passes
        self._kick.set()
        with anyio.fail_after(timeout):
            while self._last_idle_pass <= target:
                if self._done.is_set():
                    return
                await anyio.sleep(0.01)

    # -- the loop

    async def _serve(self) -> None:
        try:
            async with anyio.create_task_group() as turns:
                try:
                    await self._loop(turns)
                finally:
                    if self._stopping:  # stopped (not cancelled): let the turns finish, up to the deadline
                        with anyio.CancelScope(shield=True), anyio.move_on_after(self._drain_timeout):
                            while self._running:
                                self._kick = anyio.Event()
                                await self._kick.wait()
                    turns.cancel_scope.cancel()  # what did not finish is handed back (recovered by the next holder)
        finally:
            self._status = "stopped"
            self._done.set()

    async def _loop(self, turns: TaskGroup) -> None:
        failures = 0
        while not self._stopping:
            woken = self._index.arm()  # before the reads: a post racing them wakes the next sleep
            kick = self._kick = anyio.Event()
            self._passes += 1
            number = self._passes
            try:
                worked = await self._pass(turns)
                failures = 0
            except Exception as exc:  # the database is down or restarting: back off, then try again
                failures += 1
                self._silent("worker.pass", exc)
                with anyio.move_on_after(min(MAX_BACKOFF, ERROR_BACKOFF * 2 ** min(failures - 1, 6))):
                    await kick.wait()
                continue
            if worked:
                continue
            if not self._running and not self._deferred:
                self._last_idle_pass = number
            await self._sleep(woken, kick)

    async def _sleep(self, woken: Any, kick: anyio.Event) -> None:
        timeout = self._poll if self._poll is not None else self._index.poll_timeout()
        now = time.monotonic()
        waiting = [until for until, _ in self._backoff.values() if until > now]
        if waiting and len(self._running) < self.concurrency:
            timeout = min(timeout, min(waiting) - now)
        if len(self._running) < self.concurrency:
            try:
                due = await self._index.admin_next_due()
            except Exception as exc:
                self._silent("worker.next_due", exc)
                due = None
            if due is not None:
                timeout = min(timeout, max(0.0, (due - datetime.now(UTC)).total_seconds()))
        with anyio.move_on_after(max(timeout, 0.005)):  # always yields: the turns run on this loop too
            async with anyio.create_task_group() as tg:

                async def wait(event: Any) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                if len(self._running) < self.concurrency:  # at capacity only a finished turn matters
                    tg.start_soon(wait, woken)
                tg.start_soon(wait, kick)

    async def _pass(self, turns: TaskGroup) -> bool:
        """Fire due wake-ups, then start turns for free slots; True if it did anything."""
        free = self.concurrency - len(self._running)
        if free <= 0:
            return False
        fired = await self._fire_due()
        now = time.monotonic()
        self._backoff = {k: v for k, v in self._backoff.items() if v[0] > now or v[1] > 0}
        window = min(MAX_WINDOW, free + len(self._running) + len(self._backoff) + 4 * self.concurrency)
        entries = await self._index.admin_runnable(limit=window)
        keys = [(e.tenant_id, e.session_id) for e in entries if (e.tenant_id, e.session_id) not in self._running]
        candidates = [k for k in keys if self._backoff.get(k, (0.0, 0))[0] <= now]
        self._deferred = len(candidates) < len(keys)  # runnable, but waiting out a backoff: not idle
        # Oldest first among the first `free`, the rest of the window at random: workers sharing the
        # backend spread over the queue instead of all trying its head.
        head, rest = candidates[: max(1, free // 2)], candidates[max(1, free // 2) :]
        random.shuffle(rest)
        chosen = (head + rest)[:free]
        for key in chosen:
            self._running.add(key)
            self._counts["claimed"] += 1
            turns.start_soon(self._turn, key)
        return bool(chosen) or fired

    async def _fire_due(self) -> bool:
        now = datetime.now(UTC)
        due = await self._index.admin_due_wakeups(now=now, limit=100)
        fired = False
        for wakeup in due:
            if self._stopping:
                break
            store = self._sessions_of(wakeup.tenant_id).store
            try:
                if await wakeups.fire(store, wakeup, now):
                    self._counts["wakeups_fired"] += 1
                    fired = True
            except Exception as exc:  # one bad wake-up must not stop the others; it stays due
                self._silent("worker.wakeup", exc, session_id=wakeup.session_id)
        return fired

    def _sessions_of(self, tenant_id: str) -> Sessions:
        sessions = self._sessions.get(tenant_id)
        if sessions is None:
            if len(self._sessions) > 10_000:
                self._sessions.clear()
            sessions = self._sessions[tenant_id] = self._platform.tenant(tenant_id).sessions
        return sessions

    async def _turn(self, key: tuple[str, str]) -> None:
        tenant_id, session_id = key
        started = time.perf_counter()
        outcome = "ok"
        stop_reason = None
        try:
            sessions = self._sessions_of(tenant_id)
            async with sessions.actor(session_id, wait=0) as actor:
                if not await actor.store.is_runnable(session_id):
                    outcome = "done_elsewhere"
                    return
                result = await sessions.run_held(actor, model=self._model, options=self._options)
                stop_reason = result.stop_reason
            self._counts["processed"] += 1
            self._backoff.pop(key, None)
        except SessionBusy:
            outcome = "busy"
            self._counts["busy"] += 1
            self._backoff[key] = (time.monotonic() + BUSY_BACKOFF, 0)
        except (StorageUnavailable, LeaseLost) as exc:  # not the session's fault: run it again after a backoff
            outcome = "retry"
            self._failed(key, exc)
        except (Conflict, NotFound) as exc:
            if await self._drop_if_gone(key):
                outcome = "dropped"
            else:
                outcome = "error"
                self._failed(key, exc)
        except Exception as exc:
            outcome = "error"
            self._failed(key, exc)
        finally:
            self._running.discard(key)
            self._kick.set()
            self._telemetry.emit(
                "worker.turn",
                tenant_id=tenant_id,
                session_id=session_id,
                outcome=outcome,
                stop_reason=stop_reason,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )

    async def _drop_if_gone(self, key: tuple[str, str]) -> bool:
        try:
            return await self._index.admin_drop_runnable(*key)
        except Exception as exc:
            self._silent("worker.drop", exc, session_id=key[1])
            return False

    def _failed(self, key: tuple[str, str], exc: BaseException) -> None:
        self._counts["errors"] += 1
        _, failures = self._backoff.get(key, (0.0, 0))
        failures += 1
        delay = min(MAX_BACKOFF, ERROR_BACKOFF * 2 ** min(failures - 1, 10))
        self._backoff[key] = (time.monotonic() + delay, failures)
        self._silent("worker.turn", exc, session_id=key[1])

    def _silent(self, where: str, exc: BaseException, **fields: Any) -> None:
        self._telemetry.emit(
            "silent_catch",
            where=where,
            error=type(exc).__name__,
            code=getattr(exc, "code", None),
            message=str(exc)[:300],
            **fields,
        )
