"""The step's last tool result, written with the next step's answer: one write unit per step.

A step's last ``agent.tool_result`` (with the next step's ``span.model_request_start``) need not be durable
before the next model call is made: that call writes nothing and changes nothing outside the model. So the
loop hands those events to :class:`Deferred` and goes on. They are written

* with the turn's next write, in the same unit (usually the next step's answer: its ``agent.tool_use`` and
  ``span.model_request_end``), when that write comes within :data:`HOLD_SECONDS`; or
* on their own, :data:`HOLD_SECONDS` after they were handed over, while the model call is still under way;
* and always before any other write of the turn (its stream, an error, a status change, the interrupt
  path), which keeps the log in the loop's order on every engine.

What a crash can leave is unchanged: the process dies either before the result is written or after, and a
call without a result is answered by recovery (:mod:`openma.core.recovery`), as when a process dies while
the tool runs. A follower sees the result at most :data:`HOLD_SECONDS` later than it would have. A write runs
shielded from cancellation (an interrupt lets it finish), and its error (say ``LeaseLost``) is raised where
the loop waits for it, so the turn stops on it as it would have stopped on the write itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import sniffio
from anyio.abc import TaskGroup

from openma.core.actor import SessionActor
from openma.models import Event

#: The longest a handed-over result waits for the turn's next write before it is written on its own.
HOLD_SECONDS: Final = 0.05


class _Held:
    """Events handed over and what became of them: held, taken by a caller, or written here."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.taken = False  # a caller took the events, or a write of them started here
        self.writing = False
        self.done = anyio.Event()  # set once a write started here finished
        self.stored: list[Event] = []
        self.error: BaseException | None = None
        self.cancel_timer: Callable[[], object] | None = None
        self.wake: anyio.Event | None = None  # the timer task's, on event loops other than asyncio


class Deferred:
    """At most one batch of held events for a held actor (see the module docstring).

    On asyncio the hold is a timer handle of the event loop (a task is started only when it fires); on other
    backends it is a task that sleeps out the hold. Either way taking the events before it ends costs next
    to nothing, which is the common case: the model answers within the hold.
    """

    def __init__(self, actor: SessionActor, *, hold: float = HOLD_SECONDS) -> None:
        self._actor = actor
        self._hold = hold
        self._held: _Held | None = None
        #: Where the write (and the hold task, off asyncio) runs; ``None`` outside a turn's task group.
        self.task_group: TaskGroup | None = None

    @property
    def pending(self) -> bool:
        """True while handed-over events have been neither taken nor waited for."""
        return self._held is not None

    def hold(self, events: Sequence[dict[str, Any]]) -> None:
        """Hand ``events`` over (the previous ones must have been taken or waited for)."""
        if self._held is not None:
            raise RuntimeError("events are still held; take or wait for them first")
        if self.task_group is None:
            raise RuntimeError("holding events needs the turn's task group")
        held = self._held = _Held(list(events))
        if sniffio.current_async_library() == "asyncio":
            handle = asyncio.get_running_loop().call_later(self._hold, self._fire, held)
            held.cancel_timer = handle.cancel
        else:
            held.wake = anyio.Event()
            self.task_group.start_soon(self._timer, held)

    async def _timer(self, held: _Held) -> None:
        assert held.wake is not None
        with anyio.move_on_after(self._hold):
            await held.wake.wait()
        self._fire(held)

    def _fire(self, held: _Held) -> None:
        if held.taken or self.task_group is None:  # taken; or the turn is closing: its barrier writes them
            return
        held.taken = held.writing = True
        self.task_group.start_soon(self._write, held)

    async def _write(self, held: _Held) -> None:
        try:
            with anyio.CancelScope(shield=True):
                held.stored = await self._actor.append(held.events)
        except BaseException as exc:  # kept for wait(), which raises it in the loop's own task
            held.error = exc
        finally:
            held.done.set()

    def take(self) -> list[dict[str, Any]]:
        """The held events for the caller to write in its own unit, first (``[]``: none, or already being
        written here, in which case :meth:`wait` for them)."""
        held = self._held
        if held is None or held.writing:
            return []
        self._held = None
        held.taken = True
        if held.cancel_timer is not None:
            held.cancel_timer()
        if held.wake is not None:
            held.wake.set()
        return held.events

    async def wait(self) -> list[Event]:
        """The events a write started here stored, once it finished (``[]`` when none was started); its
        error is raised here, once."""
        held = self._held
        if held is None or not held.writing:
            return []
        with anyio.CancelScope(shield=True):  # short: the write itself is shielded
            await held.done.wait()
        self._held = None
        if held.error is not None:
            raise held.error
        return held.stored
