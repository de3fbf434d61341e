"""Sandbox upkeep: keep the orchestrator's live sandboxes alive, and reap the idle ones, on a schedule.

Remote providers give a sandbox a lifetime (E2B kills it an hour after its last ``set_timeout``, Daytona
stops it after an idle interval), and nothing else frees a sandbox a session stopped using. Every
``interval`` seconds, one pass:

1. **reaps** each sandbox unused for ``idle_reap_after`` seconds (``0``: never): snapshot, then destroy, as
   :meth:`~openma.core.orchestrator.SandboxOrchestrator.reap` does; the session warms a new one (and
   restores that snapshot) on its next call;
2. **keeps alive** every other live sandbox that declares ``keepalive``, for
   ``max(spec.lifetime, 2 * interval)`` seconds, so none dies between two passes. Upkeep is not use: it
   does not reset a sandbox's idle clock.

A failure on one sandbox is reported as ``silent_catch`` (``where="upkeep.keepalive"`` or
``"upkeep.reap"``) and never stops the loop. A sandbox whose slot is busy (being created, snapshotted or
recycled) is skipped for that pass; one running a command is kept alive, never reaped.

The platform opened with ``Platform.open`` runs the loop in its task group from the moment the
orchestrator opens (``Settings.sandbox_keepalive_interval``, ``Settings.sandbox_idle_reap_after``); the
orchestrator stops it first thing in ``aclose``. A host that builds its own orchestrator calls
``await orchestrator.start_upkeep(task_group, interval=..., idle_reap_after=...)``.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.abc import TaskStatus

from openma.errors import InvalidInput

if TYPE_CHECKING:
    from openma.core.orchestrator import SandboxOrchestrator


@attrs.frozen
class UpkeepPass:
    """What one pass did: the sessions whose sandbox was reaped, kept alive, or failed."""

    reaped: tuple[str, ...] = ()
    kept_alive: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


def _seconds(value: object, what: str, *, zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number of seconds, got {value!r}", field=what)
    if value < 0 or (value == 0 and not zero):
        raise InvalidInput(f"{what} must be {'>= 0' if zero else '> 0'}, got {value!r}", field=what)
    return float(value)


class SandboxUpkeep:
    """The keepalive and idle-reap loop of one orchestrator (see the module docstring)."""

    def __init__(self, orchestrator: SandboxOrchestrator, *, interval: float, idle_reap_after: float = 0.0) -> None:
        self.orchestrator = orchestrator
        self.interval = _seconds(interval, "interval", zero=False)
        self.idle_reap_after = _seconds(idle_reap_after, "idle_reap_after", zero=True)
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self._stopped = False

    def __repr__(self) -> str:
        return f"SandboxUpkeep(interval={self.interval}, idle_reap_after={self.idle_reap_after})"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run passes every ``interval`` seconds until :meth:`stop` (or cancellation)."""
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._stopped:
                    scope.cancel()
                task_status.started()
                while True:
                    await anyio.sleep(self.interval)
                    try:
                        await self.run_once()
                    except Exception as exc:  # never let the loop die (or take its task group down)
                        self.orchestrator._emit("silent_catch", where="upkeep", error=type(exc).__name__)
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Stop the loop and wait until it has (a pass under way is cancelled; recycles are shielded)."""
        self._stopped = True
        if self._scope is None:
            return
        self._scope.cancel()
        await self._done.wait()

    async def run_once(self) -> UpkeepPass:
        """One pass: reap what is idle, keep the rest alive."""
        orch = self.orchestrator
        reaped: list[str] = []
        kept: list[str] = []
        failed: list[str] = []
        now = time.monotonic()
        for slot in list(orch._slots.values()):
            sandbox = slot.sandbox
            if sandbox is None or slot.released or slot.lock.locked():
                continue
            session_id = slot.spec.session_id
            if self.idle_reap_after and not slot.busy and now - slot.last_used >= self.idle_reap_after:
                try:
                    await orch._recycle(slot, "reaped")
                except Exception as exc:  # the loop outlives any one sandbox
                    self._report(slot, "upkeep.reap", exc)
                    failed.append(session_id)
                else:
                    reaped.append(session_id)
                continue
            if "keepalive" not in sandbox.capabilities:
                continue
            try:
                await sandbox.keepalive(max(slot.spec.lifetime, 2 * self.interval))
            except Exception as exc:
                self._report(slot, "upkeep.keepalive", exc)
                failed.append(session_id)
            else:
                kept.append(session_id)
        return UpkeepPass(tuple(reaped), tuple(kept), tuple(failed))

    def _report(self, slot: Any, where: str, exc: BaseException) -> None:
        self.orchestrator._silent(slot, where, exc)
