"""A write the turn loop starts and waits for later: the step's last tool result, while the next call is made.

Writing a step's last ``agent.tool_result`` (with the next step's ``span.model_request_start``) has to be
durable before anything of the next step is written, but not before the next model call is prepared and
made: that call writes nothing and changes nothing outside the model. So the loop starts the write and goes
on; the next write of the turn (the call's stream, its answer, an error, a status change, the interrupt
path) first waits for it (:meth:`Deferred.wait`), which keeps the log in the loop's order on every engine.

What a crash can leave is unchanged: the result was either written before the process died or it was not,
and recovery answers a call without a result (:mod:`openma.core.recovery`) as it always did. The write runs
shielded from cancellation (an interrupt lets it finish; its outcome is known before the turn closes), and
its error (say ``LeaseLost``) is raised by the next :meth:`~Deferred.wait`, so the turn stops on it as it
would have stopped on the write itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from openma.core.actor import SessionActor
from openma.models import Event


class _Write:
    """One write in flight and, once it is done, its outcome."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.stored: list[Event] = []
        self.error: BaseException | None = None


class Deferred:
    """At most one append in flight for a held actor, started into :attr:`task_group`."""

    def __init__(self, actor: SessionActor) -> None:
        self._actor = actor
        self._write: _Write | None = None
        #: Where writes run; ``None`` outside a turn's task group (a write then runs before ``start`` returns).
        self.task_group: TaskGroup | None = None

    @property
    def pending(self) -> bool:
        """True while a started write has not been waited for."""
        return self._write is not None

    async def start(self, events: Sequence[dict[str, Any]]) -> None:
        """Start appending ``events``; the previous write must have been waited for.

        Returns once the write is under way (handed to the database, or waiting for it), so that it overlaps
        what the caller does next even when that never yields to the event loop."""
        if self._write is not None:
            raise RuntimeError("a deferred write is still in flight; wait for it first")
        if self.task_group is None:
            raise RuntimeError("deferred writes need the turn's task group")
        write = self._write = _Write()
        self.task_group.start_soon(self._run, list(events), write)
        await anyio.lowlevel.checkpoint()

    async def _run(self, events: list[dict[str, Any]], write: _Write) -> None:
        try:
            with anyio.CancelScope(shield=True):
                write.stored = await self._actor.append(events)
        except BaseException as exc:  # kept for wait(), which raises it in the loop's own task
            write.error = exc
        finally:
            write.done.set()

    async def wait(self) -> list[Event]:
        """The events the write in flight stored (``[]`` when none is); its error is raised here, once."""
        write = self._write
        if write is None:
            return []
        with anyio.CancelScope(shield=True):  # short: the write itself is shielded
            await write.done.wait()
        self._write = None
        if write.error is not None:
            raise write.error
        return write.stored
