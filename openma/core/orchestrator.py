"""The sandbox orchestrator: one sandbox per session, warmed with the session's last snapshot.

* ``get(tenant_id, session_id, spec, index=, guard=)`` returns the session's sandbox, warming it on first
  use: it reattaches to the sandbox the index records for the session when the provider still has it
  (a host that restarted), else creates one and restores the latest snapshot into it. A failed restore is
  retried (``restore_attempts``, doubling ``restore_backoff``), then raised as ``SandboxRestoreFailed``: a
  session never silently starts with an empty workspace that its next snapshot would record over the good
  one. A snapshot past its ``expires_at`` is expected to be gone: the session starts empty (``snapshot_expired``).
* ``index`` binds the session to its current lease holder's record (an actor passes a fenced
  :class:`~openma.core.sandbox_record.SessionSandboxIndex`): snapshots and the provider's sandbox id are
  recorded through it, and ``guard`` runs before every operation of the returned handle (``LeaseLost`` for a
  holder that lost the session).
* What ``get`` returns is an :class:`OrchestratedSandbox`, bound to the *session*: when the sandbox behind
  it is recycled (an out-of-memory kill, the idle reaper) or found dead at the provider (``SandboxGone``),
  the next call (or the same call, retried once) warms a replacement and restores, so the caller never
  holds a dead handle. Background process ids do not survive a replacement.
* ``idle(session_id)`` snapshots (when ``idle_snapshot``) and keeps the sandbox; ``release(session_id)``
  snapshots, then destroys, and forgets the session; ``reap(idle_for)`` recycles every sandbox unused for
  ``idle_for`` seconds (snapshot, destroy; the session warms again on its next call).
* Out of memory: an ``ExecResult`` with ``oom_killed``, or exit 137 (not a timeout) from an adapter that
  does not declare ``oom_detection`` (E2B, Daytona report the kernel's kill only as 137), is handled the
  same way: reported ``oom_killed=True``, snapshot what can be saved, destroy, warm a new one on next call.
* A snapshot is verified (its blob's size and sha256) before it is recorded, and the blob it replaces is
  deleted only after the record is written; a snapshot that could not be recorded is deleted instead.
* Telemetry: ``sandbox.exec`` for every command (exit code, outcome, duration, flags; the command masked
  and cut), ``tool.call`` when the caller names the tool (``exec(..., tool="bash")``), and
  ``sandbox.lifecycle`` (created, reattached, restored, restore_failed, snapshot_expired, snapshot,
  snapshot_failed, oom, gone, replaced, detached, destroyed). Failures the orchestrator swallows on purpose
  also go out as ``silent_catch``.

Snapshot refs are kept by a :class:`SnapshotIndex`; :class:`BlobSnapshotIndex` (the default when there is
a blob store) writes each session's latest ref next to its snapshots, so warm-up finds it after a restart.
When a newer snapshot is recorded, the older one's blob is deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import attrs
from anyio.abc import TaskGroup

from openma.core import keys
from openma.core.orchestrated import COMMAND_IN_TELEMETRY, OrchestratedSandbox, ms_since
from openma.core.sandbox_warmup import Guard, Slot, WarmUp, recorded_sandbox
from openma.core.usage import SandboxMeter, UsageRecorder
from openma.core.workspace import SNAPSHOT_TTL
from openma.errors import (
    InvalidInput,
    LeaseLost,
    NotFound,
    OpenmaError,
    SandboxError,
    SandboxGone,
)
from openma.ports.blobs import BlobStore
from openma.ports.egress import EgressEndpoint
from openma.ports.sandbox import Sandbox, SandboxProvider, SandboxSpec, SnapshotRef
from openma.ports.telemetry import Telemetry

if TYPE_CHECKING:
    from openma.core.upkeep import SandboxUpkeep

__all__ = [
    "COMMAND_IN_TELEMETRY",
    "BlobSnapshotIndex",
    "MemorySnapshotIndex",
    "OrchestratedSandbox",
    "SandboxOrchestrator",
    "SnapshotIndex",
]

#: Restore attempts at warm-up before ``SandboxRestoreFailed``, and the first pause between them.
RESTORE_ATTEMPTS: Final = 3
RESTORE_BACKOFF: Final = 0.2


class SnapshotIndex(Protocol):
    """Where the latest snapshot of each session is remembered."""

    async def latest(self, tenant_id: str, session_id: str) -> SnapshotRef | None: ...

    async def record(self, tenant_id: str, session_id: str, ref: SnapshotRef) -> SnapshotRef | None:
        """Remember ``ref`` as the latest; return the one it replaces."""
        ...


class MemorySnapshotIndex:
    """Refs (and sandbox ids) in dicts: for tests, or hosts that keep their own record."""

    def __init__(self) -> None:
        self.refs: dict[tuple[str, str], SnapshotRef] = {}
        self.sandboxes: dict[tuple[str, str], str] = {}

    async def sandbox_id(self, tenant_id: str, session_id: str) -> str | None:
        return self.sandboxes.get((tenant_id, session_id))

    async def record_sandbox_id(self, tenant_id: str, session_id: str, sandbox_id: str | None) -> None:
        if sandbox_id is None:
            self.sandboxes.pop((tenant_id, session_id), None)
        else:
            self.sandboxes[(tenant_id, session_id)] = sandbox_id

    async def latest(self, tenant_id: str, session_id: str) -> SnapshotRef | None:
        return self.refs.get((tenant_id, session_id))

    async def record(self, tenant_id: str, session_id: str, ref: SnapshotRef) -> SnapshotRef | None:
        previous = self.refs.get((tenant_id, session_id))
        self.refs[(tenant_id, session_id)] = ref
        return previous


def _ref_to_json(ref: SnapshotRef) -> bytes:
    return json.dumps(
        {
            "key": ref.key,
            "size": ref.size,
            "sha256": ref.sha256,
            "created_at": ref.created_at.isoformat(),
            "expires_at": ref.expires_at.isoformat() if ref.expires_at else None,
        }
    ).encode()


def _ref_from_json(raw: bytes) -> SnapshotRef:
    d = json.loads(raw)
    return SnapshotRef(
        key=d["key"],
        size=int(d["size"]),
        sha256=d["sha256"],
        created_at=datetime.fromisoformat(d["created_at"]),
        expires_at=datetime.fromisoformat(d["expires_at"]) if d.get("expires_at") else None,
    )


class BlobSnapshotIndex:
    """The latest ref of a session as a small JSON object at
    ``t/<tenant>/.openma/snapshots/<session>/latest.json``, expiring with the snapshot it names. A session
    snapshotted by an older release still has its ref at ``sandbox-snapshots/<tenant>/<session>/``: it is
    read from there until the next snapshot records one at the new place."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    @staticmethod
    def key(tenant_id: str, session_id: str) -> str:
        return keys.latest_snapshot_key(tenant_id, session_id)

    async def latest(self, tenant_id: str, session_id: str) -> SnapshotRef | None:
        legacy = keys.legacy_latest_snapshot_key(tenant_id, session_id)
        for key in (self.key(tenant_id, session_id), legacy):
            try:
                raw = await self.blobs.get(key)
            except NotFound:
                continue
            return _ref_from_json(raw)
        return None

    async def record(self, tenant_id: str, session_id: str, ref: SnapshotRef) -> SnapshotRef | None:
        previous = await self.latest(tenant_id, session_id)
        ttl = None
        if ref.expires_at is not None:
            ttl = max(1.0, (ref.expires_at - ref.created_at).total_seconds())
        await self.blobs.put(
            self.key(tenant_id, session_id), _ref_to_json(ref), content_type="application/json", ttl=ttl
        )
        return previous


class SandboxOrchestrator(WarmUp):
    """One sandbox per session over a :class:`~openma.ports.sandbox.SandboxProvider` (see the module doc)."""

    def __init__(
        self,
        provider: SandboxProvider,
        blobs: BlobStore | None = None,
        telemetry: Telemetry | None = None,
        *,
        idle_snapshot: bool = True,
        snapshot_ttl: float | None = SNAPSHOT_TTL,
        index: SnapshotIndex | None = None,
        restore_attempts: int = RESTORE_ATTEMPTS,
        restore_backoff: float = RESTORE_BACKOFF,
    ) -> None:
        if isinstance(restore_attempts, bool) or not isinstance(restore_attempts, int) or restore_attempts < 1:
            raise InvalidInput("restore_attempts must be an integer >= 1", field="restore_attempts")
        self.provider = provider
        self.blobs = blobs
        self.telemetry = telemetry
        self.idle_snapshot = idle_snapshot
        self.snapshot_ttl = snapshot_ttl
        self.index: SnapshotIndex = index or (BlobSnapshotIndex(blobs) if blobs is not None else MemorySnapshotIndex())
        self.restore_attempts = restore_attempts
        self.restore_backoff = restore_backoff
        self._slots: dict[str, Slot] = {}
        self._guard = anyio.Lock()
        #: The keepalive/idle-reap loop, once :meth:`start_upkeep` started it (see :mod:`openma.core.upkeep`).
        self.upkeep: SandboxUpkeep | None = None
        #: Alive and exec time of the sandboxes held here; written by :meth:`flush_usage` through
        #: ``usage_recorder`` (the platform binds it to ``t.usage.record``; ``None``: not written).
        self.usage_meter = SandboxMeter()
        self.usage_recorder: UsageRecorder | None = None
        self._usage_scope: anyio.CancelScope | None = None
        #: ``egress(tenant_id, session_id)``: the egress endpoint a new slot's spec gets when it names none
        #: (set by the platform when egress is on; an error from it fails the warm-up, never opens the network).
        self.egress: Callable[[str, str], EgressEndpoint] | None = None

    def __repr__(self) -> str:
        live = sum(1 for s in self._slots.values() if s.sandbox is not None)
        return f"SandboxOrchestrator({self.provider.name!r}, sessions={len(self._slots)}, live={live})"

    # -- the session's sandbox

    async def get(
        self,
        tenant_id: str,
        session_id: str,
        spec: SandboxSpec | None = None,
        *,
        index: SnapshotIndex | None = None,
        guard: Guard | None = None,
    ) -> OrchestratedSandbox:
        """The session's sandbox, warmed now if it has none (reattached, or created and restored).

        With ``index`` (the current lease holder's record), the session is bound to it from now on, and a
        sandbox this orchestrator kept that the record no longer names (another host has served the session
        since) is dropped, unsnapshotted, for the recorded one.
        """
        async with self._guard:
            slot = self._slots.get(session_id)
            if slot is None or slot.released:
                spec = spec or SandboxSpec(tenant_id=tenant_id, session_id=session_id)
                if spec.egress is None and self.egress is not None:
                    spec = attrs.evolve(spec, egress=self.egress(tenant_id, session_id))
                slot = Slot(spec, self.index)
                self._slots[session_id] = slot
            elif slot.spec.tenant_id != tenant_id:
                raise NotFound(f"no session {session_id!r} for this tenant", session_id=session_id)
            if index is not None:
                slot.index = index
        if guard is not None:
            await guard()
        if index is not None:
            await self._drop_superseded(slot)
        await self._warm(slot, slot.index)
        return OrchestratedSandbox(self, slot, index=index, guard=guard)

    async def _snapshot(self, slot: Slot, sandbox: Sandbox, why: str) -> SnapshotRef | None:
        """Snapshot and record it; a failure is reported, never raised (the caller is cleaning up)."""
        if "snapshot" not in sandbox.capabilities:
            return None
        started = time.perf_counter()
        try:
            ref = await self._take_snapshot(slot, sandbox, slot.index, ttl=self.snapshot_ttl)
        except OpenmaError as exc:
            self._silent(slot, f"orchestrator.snapshot.{why}", exc)
            self._lifecycle(
                slot, "snapshot_failed", sandbox_id=sandbox.id, why=why, error=exc.code, duration_ms=ms_since(started)
            )
            return None
        self._lifecycle(
            slot, "snapshot", sandbox_id=sandbox.id, why=why, key=ref.key, size=ref.size, duration_ms=ms_since(started)
        )
        return ref

    async def _take_snapshot(
        self, slot: Slot, sandbox: Sandbox, index: SnapshotIndex, *, ttl: float | None
    ) -> SnapshotRef:
        """Snapshot, verify the blob, record it through ``index``, then delete the blob it replaced.

        Until the record is written the previous snapshot stays the latest; a snapshot that fails its
        check or whose record is refused (``LeaseLost``) is deleted, and the error raised.
        """
        ref = await sandbox.snapshot(ttl=ttl)
        try:
            await self._verify(ref)
            previous = await index.record(slot.spec.tenant_id, slot.spec.session_id, ref)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._delete_blob(slot, ref.key, "orchestrator.snapshot.discard")
            raise
        if previous is not None and previous.key != ref.key:
            await self._delete_blob(slot, previous.key, "orchestrator.snapshot.prune")
        return ref

    async def _verify(self, ref: SnapshotRef) -> None:
        if self.blobs is None:
            return
        info = await self.blobs.head(ref.key)
        digest = info.metadata.get("sha256")
        if info.size != ref.size or (digest is not None and digest != ref.sha256):
            raise SandboxError(
                f"snapshot {ref.key!r} was not stored whole (size {info.size}, expected {ref.size})", key=ref.key
            )

    async def _delete_blob(self, slot: Slot, key: str, where: str) -> None:
        if self.blobs is None:
            return
        try:
            await self.blobs.delete(key)
        except OpenmaError as exc:  # gone already, or an orphan that expires with its TTL
            self._silent(slot, where, exc)

    async def _recycle(self, slot: Slot, why: str, *, snapshot: bool = True) -> SnapshotRef | None:
        """Snapshot (unless told not to), destroy the sandbox, leave the slot empty for the next warm-up."""
        ref = None
        with anyio.CancelScope(shield=True):
            async with slot.lock:
                ref = await self._recycle_locked(slot, why, snapshot=snapshot)
        return ref

    async def _recycle_locked(self, slot: Slot, why: str, *, snapshot: bool) -> SnapshotRef | None:
        sandbox, ref = slot.sandbox, None
        if sandbox is None:
            return None
        if snapshot:
            ref = await self._snapshot(slot, sandbox, why)
        if await self._taken_over(slot, sandbox):
            # The session's new holder (elsewhere) reattached to this very sandbox: it is theirs now.
            slot.sandbox = None
            self._lifecycle(slot, "detached", why=why, sandbox_id=sandbox.id)
            return ref
        await self._destroy(slot, sandbox, why)
        try:
            await self._record_sandbox_id(slot, slot.index, None)
        except LeaseLost as exc:
            self._silent(slot, "orchestrator.record_sandbox_id", exc)
        return ref

    async def _taken_over(self, slot: Slot, sandbox: Sandbox) -> bool:
        """True when the slot's holder lost the session and the record names ``sandbox`` for the new one."""
        check = getattr(slot.index, "check", None)
        if check is None:
            return False
        try:
            await check()
            return False
        except LeaseLost:
            recorded = await recorded_sandbox(slot.index, slot.spec.tenant_id, slot.spec.session_id)
            return recorded == sandbox.id
        except OpenmaError as exc:
            self._silent(slot, "orchestrator.lease_check", exc)
            return False

    async def _replace(self, slot: Slot, dead: Sandbox, what: str, exc: SandboxGone, index: SnapshotIndex) -> None:
        """``dead`` is gone at the provider: forget it and warm a replacement (restoring the latest snapshot)."""
        self._silent(slot, f"orchestrated.{what}.gone", exc)
        replaced = False
        async with slot.lock:
            if slot.sandbox is dead:
                self._lifecycle(slot, "gone", sandbox_id=dead.id, op=what, error=exc.code)
                slot.sandbox = None
                slot.gone.add(dead.id)
                replaced = True
                with anyio.CancelScope(shield=True):
                    try:  # frees what the provider may still hold; a sandbox it cannot find is not an error
                        await dead.destroy()
                    except OpenmaError as err:
                        self._silent(slot, "orchestrator.destroy", err)
        fresh = await self._warm(slot, index)
        if replaced:
            self._lifecycle(slot, "replaced", sandbox_id=fresh.id, replaced=dead.id, op=what)

    async def idle(self, session_id: str) -> SnapshotRef | None:
        """The session went idle: snapshot it (when ``idle_snapshot``), keep the sandbox."""
        slot = self._slots.get(session_id)
        if slot is None or slot.sandbox is None or not self.idle_snapshot:
            return None
        async with slot.lock:
            current = slot.current()
            return None if current is None else await self._snapshot(slot, current, "idle")

    async def release(self, session_id: str, *, snapshot: bool = True) -> SnapshotRef | None:
        """The session is done with its sandbox: snapshot, destroy, forget. Idempotent."""
        slot = self._slots.get(session_id)
        return None if slot is None else await self._release(slot, snapshot=snapshot)

    async def _release(self, slot: Slot, *, snapshot: bool = True) -> SnapshotRef | None:
        if self._slots.get(slot.spec.session_id) is slot:
            del self._slots[slot.spec.session_id]
        if slot.released:
            return None
        slot.released = True
        return await self._recycle(slot, "release", snapshot=snapshot)

    async def reap(self, idle_for: float) -> list[str]:
        """Recycle the sandboxes unused for ``idle_for`` seconds (snapshot, destroy); their session ids.

        Their sessions stay known: the next call through their :class:`OrchestratedSandbox` warms a new
        sandbox and restores the snapshot just taken.
        """
        now = time.monotonic()
        idle = [
            s
            for s in list(self._slots.values())
            if s.sandbox is not None and not s.busy and now - s.last_used >= idle_for
        ]
        for slot in idle:
            await self._recycle(slot, "reaped")
        return [s.spec.session_id for s in idle]

    async def start_upkeep(self, task_group: TaskGroup, *, interval: float, idle_reap_after: float = 0.0) -> None:
        """Keep the live sandboxes alive and reap the idle ones every ``interval`` seconds, in ``task_group``,
        until :meth:`aclose` (see :mod:`openma.core.upkeep`)."""
        from openma.core.upkeep import SandboxUpkeep

        if self.upkeep is not None:
            raise SandboxError("the upkeep loop of this orchestrator is already running")
        self.upkeep = SandboxUpkeep(self, interval=interval, idle_reap_after=idle_reap_after)
        await task_group.start(self.upkeep.run)
        self._usage_scope = scope = anyio.CancelScope()
        task_group.start_soon(self._usage_loop, interval, scope)

    async def aclose(self) -> None:
        """Stop the upkeep loop, then release every session (snapshot, destroy)."""
        if self.upkeep is not None:
            await self.upkeep.stop()
        if self._usage_scope is not None:
            self._usage_scope.cancel()
        for session_id in list(self._slots):
            await self.release(session_id)
        await self.flush_usage()

    async def _after_exec(self, slot: Slot, sandbox: Sandbox, oom: bool, exit_code: int) -> None:
        if oom and slot.sandbox is sandbox:
            self._lifecycle(slot, "oom", exit_code=exit_code)
            await self._recycle(slot, "oom")

    # -- usage (sandbox alive and exec seconds, see openma.core.usage.SandboxMeter)

    def _lifecycle(self, slot: Slot, action: str, **fields: Any) -> None:
        sandbox_id = fields.get("sandbox_id") or (slot.sandbox.id if slot.sandbox is not None else None)
        if sandbox_id is not None:
            now = int(time.time() * 1000)
            if action in ("created", "reattached"):
                spec = slot.spec
                self.usage_meter.started(spec.tenant_id, spec.session_id, sandbox_id, self.provider.name, now)
            elif action in ("destroyed", "detached", "gone"):
                self.usage_meter.stopped(sandbox_id, now)
        super()._lifecycle(slot, action, **fields)

    def _emit(self, kind: str, **fields: Any) -> None:
        if kind == "sandbox.exec" and isinstance(fields.get("sandbox_id"), str):
            self.usage_meter.ran(fields["sandbox_id"], fields.get("duration_ms"))
        super()._emit(kind, **fields)

    async def flush_usage(self, *, checkpoint: bool = True) -> int:
        """Write the metered sandbox time (closing the open periods now, with ``checkpoint``); slices written.

        A tenant whose write fails keeps its slices for the next flush (same keys: never counted twice);
        the failure is reported as ``silent_catch``. Called after each turn, by the upkeep loop's task and
        on :meth:`aclose`.
        """
        if checkpoint:
            self.usage_meter.checkpoint(int(time.time() * 1000))
        recorder = self.usage_recorder
        if recorder is None:
            self.usage_meter.take()
            return 0
        written = 0
        for tenant_id, slices in self.usage_meter.take().items():
            try:
                await recorder(tenant_id, slices)
                written += len(slices)
            except OpenmaError as exc:
                self.usage_meter.give_back(tenant_id, slices)
                self._emit(
                    "silent_catch",
                    where="orchestrator.flush_usage",
                    error=type(exc).__name__,
                    code=exc.code,
                    tenant_id=tenant_id,
                )
        return written

    async def _usage_loop(self, interval: float, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(interval)
                await self.flush_usage()

    def sessions(self) -> Mapping[str, str | None]:
        """Session id → live sandbox id (``None`` between recycles)."""
        return {sid: (s.sandbox.id if s.sandbox else None) for sid, s in self._slots.items()}
