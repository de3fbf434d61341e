"""The sandbox orchestrator: one sandbox per session, warmed with the session's last snapshot.

* ``get(tenant_id, session_id, spec)`` returns the session's sandbox, creating it on first use ("warm-up"):
  the latest snapshot recorded for the session is restored into it (a snapshot that is gone or refused is
  reported and the session starts with an empty workspace, as a fresh one would).
* What ``get`` returns is an :class:`OrchestratedSandbox`, bound to the *session*: when the sandbox behind
  it is recycled (an out-of-memory kill, the idle reaper), the next call warms a new one and restores, so
  the caller never holds a dead handle. Background process ids do not survive a recycle.
* ``idle(session_id)`` snapshots (when ``idle_snapshot``) and keeps the sandbox; ``release(session_id)``
  snapshots, then destroys, and forgets the session; ``reap(idle_for)`` recycles every sandbox unused for
  ``idle_for`` seconds (snapshot, destroy; the session warms again on its next call).
* After an ``ExecResult`` with ``oom_killed``: snapshot what can be saved, destroy the sandbox, and let the
  next call warm a new one from that snapshot.
* Telemetry: ``sandbox.exec`` for every command (exit code, outcome, duration, flags; the command masked
  and cut), ``tool.call`` when the caller names the tool (``exec(..., tool="bash")``), and
  ``sandbox.lifecycle`` (created, restored, restore_failed, snapshot, snapshot_failed, oom, recycled,
  destroyed). Failures the orchestrator swallows on purpose also go out as ``silent_catch``.

Snapshot refs are kept by a :class:`SnapshotIndex`; :class:`BlobSnapshotIndex` (the default when there is
a blob store) writes each session's latest ref next to its snapshots, so warm-up finds it after a restart.
When a newer snapshot is recorded, the older one's blob is deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
from anyio.abc import TaskGroup

from openma.core import keys
from openma.core.workspace import SNAPSHOT_TTL, mask_secrets
from openma.errors import NotFound, OpenmaError, SandboxError
from openma.ports.blobs import BlobStore
from openma.ports.sandbox import ExecResult, FileInfo, ProcessInfo, Sandbox, SandboxProvider, SandboxSpec, SnapshotRef
from openma.ports.telemetry import Telemetry

if TYPE_CHECKING:
    from openma.core.upkeep import SandboxUpkeep

COMMAND_IN_TELEMETRY: Final = 200


class SnapshotIndex(Protocol):
    """Where the latest snapshot of each session is remembered."""

    async def latest(self, tenant_id: str, session_id: str) -> SnapshotRef | None: ...

    async def record(self, tenant_id: str, session_id: str, ref: SnapshotRef) -> SnapshotRef | None:
        """Remember ``ref`` as the latest; return the one it replaces."""
        ...


class MemorySnapshotIndex:
    """Refs in a dict: for tests, or hosts that keep their own record."""

    def __init__(self) -> None:
        self.refs: dict[tuple[str, str], SnapshotRef] = {}

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
        return keys.snapshot_root_prefix(tenant_id, session_id) + "latest.json"

    async def latest(self, tenant_id: str, session_id: str) -> SnapshotRef | None:
        legacy = keys.legacy_snapshot_root_prefix(tenant_id, session_id) + "latest.json"
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


class _Slot:
    """One session's place in the orchestrator: the live sandbox (or none, between recycles)."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.sandbox: Sandbox | None = None
        self.lock = anyio.Lock()
        self.last_used = time.monotonic()
        self.released = False
        self.secrets: dict[str, str] = {}
        #: Commands running through the orchestrator now: a sandbox in use is never reaped.
        self.busy = 0

    def current(self) -> Sandbox | None:
        return self.sandbox


def _outcome(result: ExecResult) -> str:
    if result.oom_killed:
        return "oom"
    if result.timed_out:
        return "timeout"
    return "ok" if result.exit_code == 0 else "error"


class SandboxOrchestrator:
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
    ) -> None:
        self.provider = provider
        self.blobs = blobs
        self.telemetry = telemetry
        self.idle_snapshot = idle_snapshot
        self.snapshot_ttl = snapshot_ttl
        self.index: SnapshotIndex = index or (BlobSnapshotIndex(blobs) if blobs is not None else MemorySnapshotIndex())
        self._slots: dict[str, _Slot] = {}
        self._guard = anyio.Lock()
        #: The keepalive/idle-reap loop, once :meth:`start_upkeep` started it (see :mod:`openma.core.upkeep`).
        self.upkeep: SandboxUpkeep | None = None

    def __repr__(self) -> str:
        live = sum(1 for s in self._slots.values() if s.sandbox is not None)
        return f"SandboxOrchestrator({self.provider.name!r}, sessions={len(self._slots)}, live={live})"

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(kind, **fields)

    def _lifecycle(self, slot: _Slot, action: str, **fields: Any) -> None:
        sandbox_id = slot.sandbox.id if slot.sandbox is not None else fields.pop("sandbox_id", None)
        self._emit(
            "sandbox.lifecycle",
            action=action,
            tenant_id=slot.spec.tenant_id,
            session_id=slot.spec.session_id,
            sandbox_id=sandbox_id,
            provider=self.provider.name,
            **fields,
        )

    def _silent(self, slot: _Slot, where: str, exc: BaseException) -> None:
        self._emit(
            "silent_catch",
            where=where,
            error=type(exc).__name__,
            code=getattr(exc, "code", None),
            message=str(exc)[:300],
            tenant_id=slot.spec.tenant_id,
            session_id=slot.spec.session_id,
        )

    # -- the session's sandbox

    async def get(self, tenant_id: str, session_id: str, spec: SandboxSpec | None = None) -> OrchestratedSandbox:
        """The session's sandbox, warmed now if it has none (restoring its latest snapshot)."""
        async with self._guard:
            slot = self._slots.get(session_id)
            if slot is None or slot.released:
                slot = _Slot(spec or SandboxSpec(tenant_id=tenant_id, session_id=session_id))
                self._slots[session_id] = slot
            elif slot.spec.tenant_id != tenant_id:
                raise NotFound(f"no session {session_id!r} for this tenant", session_id=session_id)
        await self._warm(slot)
        return OrchestratedSandbox(self, slot)

    async def _warm(self, slot: _Slot) -> Sandbox:
        if slot.released:
            raise SandboxError(f"the sandbox of session {slot.spec.session_id} was released")
        slot.last_used = time.monotonic()
        if slot.sandbox is not None:
            return slot.sandbox
        async with slot.lock:
            current = slot.current()  # another task may have warmed it while this one waited
            if current is not None:
                return current
            started = time.perf_counter()
            sandbox = await self.provider.create(slot.spec)
            if slot.secrets:
                sandbox.set_secrets(slot.secrets)
            slot.sandbox = sandbox
            self._lifecycle(slot, "created", duration_ms=_ms(started))
            await self._restore_latest(slot, sandbox)
            return sandbox

    async def _restore_latest(self, slot: _Slot, sandbox: Sandbox) -> None:
        if "snapshot" not in sandbox.capabilities:
            return
        try:
            ref = await self.index.latest(slot.spec.tenant_id, slot.spec.session_id)
        except Exception as exc:
            self._silent(slot, "orchestrator.snapshot_index", exc)
            return
        if ref is None:
            return
        started = time.perf_counter()
        try:
            await sandbox.restore(ref)
        except OpenmaError as exc:
            # Like a fresh session: the workspace starts empty, and the reason is on record.
            self._silent(slot, "orchestrator.restore", exc)
            self._lifecycle(slot, "restore_failed", key=ref.key, error=exc.code, duration_ms=_ms(started))
            return
        self._lifecycle(slot, "restored", key=ref.key, size=ref.size, duration_ms=_ms(started))

    async def _snapshot(self, slot: _Slot, sandbox: Sandbox, why: str) -> SnapshotRef | None:
        """Snapshot and record it; a failure is reported, never raised (the caller is cleaning up)."""
        if "snapshot" not in sandbox.capabilities:
            return None
        started = time.perf_counter()
        try:
            ref = await sandbox.snapshot(ttl=self.snapshot_ttl)
            await self._record(slot, ref)
        except OpenmaError as exc:
            self._silent(slot, f"orchestrator.snapshot.{why}", exc)
            self._lifecycle(slot, "snapshot_failed", why=why, error=exc.code, duration_ms=_ms(started))
            return None
        self._lifecycle(slot, "snapshot", why=why, key=ref.key, size=ref.size, duration_ms=_ms(started))
        return ref

    async def _record(self, slot: _Slot, ref: SnapshotRef) -> None:
        """Make ``ref`` the session's latest snapshot and delete the one it replaces."""
        previous = await self.index.record(slot.spec.tenant_id, slot.spec.session_id, ref)
        if previous is not None and previous.key != ref.key and self.blobs is not None:
            try:
                await self.blobs.delete(previous.key)
            except OpenmaError as exc:
                self._silent(slot, "orchestrator.snapshot.prune", exc)

    async def _recycle(self, slot: _Slot, why: str, *, snapshot: bool = True) -> SnapshotRef | None:
        """Snapshot (unless told not to), destroy the sandbox, leave the slot empty for the next warm-up."""
        ref = None
        with anyio.CancelScope(shield=True):
            async with slot.lock:
                ref = await self._recycle_locked(slot, why, snapshot=snapshot)
        return ref

    async def _recycle_locked(self, slot: _Slot, why: str, *, snapshot: bool) -> SnapshotRef | None:
        sandbox, ref = slot.sandbox, None
        if sandbox is None:
            return None
        if snapshot:
            ref = await self._snapshot(slot, sandbox, why)
        try:
            await sandbox.destroy()
        except OpenmaError as exc:
            self._silent(slot, "orchestrator.destroy", exc)
        slot.sandbox = None
        self._lifecycle(slot, "destroyed", why=why, sandbox_id=sandbox.id)
        return ref

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

    async def _release(self, slot: _Slot, *, snapshot: bool = True) -> SnapshotRef | None:
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

    async def aclose(self) -> None:
        """Stop the upkeep loop, then release every session (snapshot, destroy)."""
        if self.upkeep is not None:
            await self.upkeep.stop()
        for session_id in list(self._slots):
            await self.release(session_id)

    async def _after_exec(self, slot: _Slot, sandbox: Sandbox, result: ExecResult) -> None:
        if result.oom_killed and slot.sandbox is sandbox:
            self._lifecycle(slot, "oom", exit_code=result.exit_code)
            await self._recycle(slot, "oom")

    def sessions(self) -> Mapping[str, str | None]:
        """Session id → live sandbox id (``None`` between recycles)."""
        return {sid: (s.sandbox.id if s.sandbox else None) for sid, s in self._slots.items()}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class OrchestratedSandbox:
    """A session's sandbox as the orchestrator hands it out: the :class:`~openma.ports.sandbox.Sandbox`
    port, instrumented, and bound to the session rather than to one provider sandbox."""

    def __init__(self, orchestrator: SandboxOrchestrator, slot: _Slot) -> None:
        self._orch = orchestrator
        self._slot = slot

    def __repr__(self) -> str:
        current = self._slot.sandbox.id if self._slot.sandbox else None
        return f"OrchestratedSandbox(session={self._slot.spec.session_id!r}, sandbox={current!r})"

    async def _sb(self) -> Sandbox:
        return await self._orch._warm(self._slot)

    @property
    def id(self) -> str:
        """The id of the provider sandbox behind it right now."""
        if self._slot.sandbox is None:
            raise SandboxError(f"session {self._slot.spec.session_id} has no live sandbox")
        return self._slot.sandbox.id

    @property
    def capabilities(self) -> frozenset[str]:
        sandbox = self._slot.sandbox
        return sandbox.capabilities if sandbox is not None else frozenset()

    @property
    def session_id(self) -> str:
        return self._slot.spec.session_id

    async def exec(
        self,
        cmd: str,
        *,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
        tool: str | None = None,
    ) -> ExecResult:
        """``Sandbox.exec``, reported to telemetry; ``tool`` names the tool for a ``tool.call`` event."""
        sandbox = await self._sb()
        spec = self._slot.spec
        started = time.perf_counter()
        self._slot.busy += 1
        try:
            result = await sandbox.exec(cmd, timeout=timeout, env=env, cwd=cwd, secrets=secrets)
        except OpenmaError as exc:
            fields = {"tenant_id": spec.tenant_id, "session_id": spec.session_id, "sandbox_id": sandbox.id}
            self._orch._emit("sandbox.exec", **fields, outcome="failed", error=exc.code, duration_ms=_ms(started))
            if tool is not None:
                self._orch._emit("tool.call", **fields, tool=tool, outcome="failed", duration_ms=_ms(started))
            raise
        finally:
            self._slot.busy -= 1
            self._slot.last_used = time.monotonic()
        fields = {"tenant_id": spec.tenant_id, "session_id": spec.session_id, "sandbox_id": sandbox.id}
        outcome = _outcome(result)
        self._orch._emit(
            "sandbox.exec",
            **fields,
            command=mask_secrets(cmd, self._slot.secrets.values())[:COMMAND_IN_TELEMETRY],
            exit_code=result.exit_code,
            outcome=outcome,
            timed_out=result.timed_out,
            truncated=result.truncated,
            oom_killed=result.oom_killed,
            duration_ms=round(result.duration * 1000, 3),
        )
        if tool is not None:
            self._orch._emit("tool.call", **fields, tool=tool, outcome=outcome, duration_ms=_ms(started))
        await self._orch._after_exec(self._slot, sandbox, result)
        return result

    async def start(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ProcessInfo:
        return await (await self._sb()).start(cmd, env=env, cwd=cwd, secrets=secrets)

    async def process(self, process_id: str) -> ProcessInfo:
        return await (await self._sb()).process(process_id)

    async def logs(self, process_id: str) -> tuple[str, str]:
        return await (await self._sb()).logs(process_id)

    async def kill(self, process_id: str) -> None:
        await (await self._sb()).kill(process_id)

    def set_secrets(self, secrets: Mapping[str, str]) -> None:
        """Registered on the live sandbox and remembered for the ones that replace it after a recycle."""
        if self._slot.released:
            raise SandboxError(f"the sandbox of session {self._slot.spec.session_id} was released")
        self._slot.secrets.update(secrets)
        if self._slot.sandbox is not None:
            self._slot.sandbox.set_secrets(secrets)

    async def read_file(self, path: str) -> bytes:
        return await (await self._sb()).read_file(path)

    async def write_file(self, path: str, data: bytes) -> None:
        await (await self._sb()).write_file(path, data)

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        return await (await self._sb()).list_files(path)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await (await self._sb()).remove(path, recursive=recursive)

    async def exists(self, path: str) -> bool:
        return await (await self._sb()).exists(path)

    async def snapshot(self, *, ttl: float | None = SNAPSHOT_TTL) -> SnapshotRef:
        """Snapshot now and record it as the session's latest."""
        sandbox = await self._sb()
        ref = await sandbox.snapshot(ttl=ttl)
        await self._orch._record(self._slot, ref)
        return ref

    async def restore(self, ref: SnapshotRef) -> None:
        await (await self._sb()).restore(ref)

    async def keepalive(self, seconds: float) -> None:
        self._slot.last_used = time.monotonic()
        await (await self._sb()).keepalive(seconds)

    async def destroy(self) -> None:
        """Release the session's sandbox (snapshot, then destroy). Idempotent; later calls raise."""
        await self._orch._release(self._slot)
