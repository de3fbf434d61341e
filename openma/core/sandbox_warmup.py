"""How the orchestrator warms a session's sandbox, and the state it keeps per session.

:class:`WarmUp` is the part of :class:`~openma.core.orchestrator.SandboxOrchestrator` that brings a session's
sandbox to life: reattach to the sandbox the session's record names when the provider still has it,
otherwise create one, restore the latest snapshot into it (retried, then ``SandboxRestoreFailed``; an
expired snapshot means an empty start) and record its id. A sandbox is put in its slot only once that has
succeeded, so nothing can snapshot a sandbox whose restore did not happen. It also holds the slot (one per
session) and the telemetry helpers every part of the orchestrator uses.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from openma.core.orchestrated import ms_since
from openma.errors import (
    InvalidInput,
    LeaseLost,
    NotFound,
    OpenmaError,
    SandboxError,
    SandboxGone,
    SandboxRestoreFailed,
)
from openma.ports.sandbox import Sandbox, SandboxProvider, SandboxSpec, SnapshotRef
from openma.ports.telemetry import Telemetry

if TYPE_CHECKING:
    from openma.core.orchestrator import SnapshotIndex


async def recorded_sandbox(index: SnapshotIndex, tenant_id: str, session_id: str) -> str | None:
    """The provider sandbox id ``index`` records for the session (``None`` if it keeps none)."""
    read = getattr(index, "sandbox_id", None)
    return await read(tenant_id, session_id) if read is not None else None


#: A lease check run before every operation of a handle (raises ``LeaseLost``).
Guard = Callable[[], Awaitable[None]]


class Slot:
    """One session's place in the orchestrator: the live sandbox (or none, between recycles)."""

    def __init__(self, spec: SandboxSpec, index: SnapshotIndex) -> None:
        self.spec = spec
        self.sandbox: Sandbox | None = None
        self.lock = anyio.Lock()
        self.last_used = time.monotonic()
        self.released = False
        self.secrets: dict[str, str] = {}
        #: Where this session's snapshots and sandbox id are recorded: its latest holder's binding.
        self.index = index
        #: Provider ids found gone: never reattached to, whatever the record still says.
        self.gone: set[str] = set()
        #: Commands running through the orchestrator now: a sandbox in use is never reaped.
        self.busy = 0

    def current(self) -> Sandbox | None:
        return self.sandbox


def expired_ref(ref: SnapshotRef) -> bool:
    return ref.expires_at is not None and ref.expires_at <= datetime.now(UTC)


class WarmUp:
    """Warm-up, slots and telemetry helpers of the orchestrator (see the module docstring)."""

    provider: SandboxProvider
    telemetry: Telemetry | None
    restore_attempts: int
    restore_backoff: float

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(kind, **fields)

    def _lifecycle(self, slot: Slot, action: str, **fields: Any) -> None:
        sandbox_id = fields.pop("sandbox_id", None) or (slot.sandbox.id if slot.sandbox is not None else None)
        self._emit(
            "sandbox.lifecycle",
            action=action,
            tenant_id=slot.spec.tenant_id,
            session_id=slot.spec.session_id,
            sandbox_id=sandbox_id,
            provider=self.provider.name,
            **fields,
        )

    def _silent(self, slot: Slot, where: str, exc: BaseException) -> None:
        self._emit(
            "silent_catch",
            where=where,
            error=type(exc).__name__,
            code=getattr(exc, "code", None),
            message=str(exc)[:300],
            tenant_id=slot.spec.tenant_id,
            session_id=slot.spec.session_id,
        )

    async def _drop_superseded(self, slot: Slot) -> None:
        sandbox = slot.sandbox
        if sandbox is None:
            return
        try:
            recorded = await recorded_sandbox(slot.index, slot.spec.tenant_id, slot.spec.session_id)
        except OpenmaError as exc:
            self._silent(slot, "orchestrator.sandbox_record", exc)
            return
        if recorded == sandbox.id or getattr(slot.index, "sandbox_id", None) is None:
            return
        with anyio.CancelScope(shield=True):
            async with slot.lock:
                if slot.sandbox is sandbox:
                    await self._destroy(slot, sandbox, "superseded")

    async def _warm(self, slot: Slot, index: SnapshotIndex) -> Sandbox:
        if slot.released:
            raise SandboxError(f"the sandbox of session {slot.spec.session_id} was released")
        slot.last_used = time.monotonic()
        if slot.sandbox is not None:
            return slot.sandbox
        async with slot.lock:
            current = slot.current()  # another task may have warmed it while this one waited
            if current is not None:
                return current
            sandbox = await self._reattach(slot, index)
            if sandbox is None:
                sandbox = await self._create_restored(slot, index)
            slot.sandbox = sandbox  # only now: nothing snapshots a sandbox whose restore has not succeeded
            return sandbox

    async def _reattach(self, slot: Slot, index: SnapshotIndex) -> Sandbox | None:
        """The sandbox the record names, when the provider still has it (a host that restarted)."""
        spec = slot.spec
        try:
            recorded = await recorded_sandbox(index, spec.tenant_id, spec.session_id)
        except OpenmaError as exc:
            self._silent(slot, "orchestrator.sandbox_record", exc)
            return None
        if recorded is None or recorded in slot.gone:
            return None
        started = time.perf_counter()
        try:
            sandbox = await self.provider.attach(recorded, spec)
        except (NotFound, SandboxGone) as exc:  # gone: nothing to destroy, a new one is created
            self._silent(slot, "orchestrator.reattach", exc)
            self._lifecycle(slot, "reattach_failed", sandbox_id=recorded, reason="gone")
            return None
        except OpenmaError as exc:  # it may still be alive: the sweeper finds it by its labels
            self._silent(slot, "orchestrator.reattach", exc)
            self._lifecycle(slot, "reattach_failed", sandbox_id=recorded, reason=exc.code)
            return None
        if slot.secrets:
            sandbox.set_secrets(slot.secrets)
        self._lifecycle(slot, "reattached", sandbox_id=sandbox.id, duration_ms=ms_since(started))
        return sandbox

    async def _create_restored(self, slot: Slot, index: SnapshotIndex) -> Sandbox:
        started = time.perf_counter()
        sandbox = await self.provider.create(slot.spec)
        try:
            if slot.secrets:
                sandbox.set_secrets(slot.secrets)
            self._lifecycle(slot, "created", sandbox_id=sandbox.id, duration_ms=ms_since(started))
            await self._restore_latest(slot, sandbox, index)
            await self._record_sandbox_id(slot, index, sandbox.id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._destroy(slot, sandbox, "warm_up_failed")
            raise
        return sandbox

    async def _record_sandbox_id(self, slot: Slot, index: SnapshotIndex, sandbox_id: str | None) -> None:
        """Name the session's sandbox in the record (fenced: ``LeaseLost`` propagates)."""
        write = getattr(index, "record_sandbox_id", None)
        if write is None:
            return
        try:
            await write(slot.spec.tenant_id, slot.spec.session_id, sandbox_id)
        except LeaseLost:
            raise
        except OpenmaError as exc:  # only a restarted host's reattach needs it; it creates a new one instead
            self._silent(slot, "orchestrator.record_sandbox_id", exc)

    async def _restore_latest(self, slot: Slot, sandbox: Sandbox, index: SnapshotIndex) -> None:
        """Restore the latest snapshot, retrying; ``SandboxRestoreFailed`` when it cannot be done."""
        if "snapshot" not in sandbox.capabilities:
            return
        spec = slot.spec
        ref: SnapshotRef | None = None
        for attempt in range(1, self.restore_attempts + 1):
            started = time.perf_counter()
            try:
                ref = await index.latest(spec.tenant_id, spec.session_id)
                if ref is None:
                    return
                if expired_ref(ref):
                    self._lifecycle(slot, "snapshot_expired", sandbox_id=sandbox.id, key=ref.key)
                    return
                await sandbox.restore(ref)
            except (SandboxGone, LeaseLost):
                raise
            except OpenmaError as exc:
                key = ref.key if ref is not None else None
                self._lifecycle(slot, "restore_failed", sandbox_id=sandbox.id, key=key, error=exc.code, attempt=attempt)
                if isinstance(exc, NotFound | InvalidInput) or attempt == self.restore_attempts:
                    raise SandboxRestoreFailed(
                        f"session {spec.session_id}: its workspace snapshot could not be restored"
                        f" ({exc.code} after {attempt} attempt(s)): {exc.message}",
                        session_id=spec.session_id,
                        key=key,
                        cause=exc.code,
                        attempts=attempt,
                    ) from exc
                self._silent(slot, "orchestrator.restore", exc)  # retried
                await anyio.sleep(self.restore_backoff * 2 ** (attempt - 1))
                continue
            self._lifecycle(
                slot,
                "restored",
                sandbox_id=sandbox.id,
                key=ref.key,
                size=ref.size,
                attempt=attempt,
                duration_ms=ms_since(started),
            )
            return

    async def _destroy(self, slot: Slot, sandbox: Sandbox, why: str) -> None:
        """Destroy ``sandbox`` (errors reported) and empty the slot if it held it."""
        try:
            await sandbox.destroy()
        except OpenmaError as exc:
            self._silent(slot, "orchestrator.destroy", exc)
        if slot.sandbox is sandbox:
            slot.sandbox = None
        self._lifecycle(slot, "destroyed", why=why, sandbox_id=sandbox.id)

    async def _vanished(self, slot: Slot, sandbox: Sandbox) -> bool:
        """True when the provider no longer has ``sandbox`` (asked after an operation failed)."""
        try:
            await self.provider.attach(sandbox.id, slot.spec)
        except (NotFound, SandboxGone):
            return True
        except OpenmaError as exc:
            self._silent(slot, "orchestrator.liveness", exc)
        return False
