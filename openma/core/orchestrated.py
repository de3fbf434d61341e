"""The handle :meth:`SandboxOrchestrator.get <openma.core.orchestrator.SandboxOrchestrator.get>` returns.

An :class:`OrchestratedSandbox` is the :class:`~openma.ports.sandbox.Sandbox` port bound to a *session*, not
to one provider sandbox:

* before every operation it runs its ``guard`` (the actor's lease check: ``LeaseLost`` for a holder that
  lost the session, reads included) and then finds the session's live sandbox, warming one if needed;
* an operation that finds the sandbox gone at the provider (``SandboxGone``) has it replaced (a new sandbox,
  the latest snapshot restored) and is run once more on the replacement;
* ``exec`` is reported to telemetry (``sandbox.exec``, and ``tool.call`` when ``tool`` is named), and an
  out-of-memory kill recycles the sandbox (see the orchestrator's module doc);
* ``snapshot`` records through the handle's own index, fenced: a stale holder's snapshot never becomes the
  session's latest.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import attrs

from openma.core.workspace import SNAPSHOT_TTL, mask_secrets
from openma.errors import OpenmaError, SandboxError, SandboxGone
from openma.ports.sandbox import ExecResult, FileInfo, ProcessInfo, Sandbox, SnapshotRef

if TYPE_CHECKING:
    from openma.core.orchestrator import SandboxOrchestrator, SnapshotIndex
    from openma.core.sandbox_warmup import Guard, Slot

COMMAND_IN_TELEMETRY: Final = 200
#: What an out-of-memory kill exits with, on every adapter.
OOM_EXIT: Final = 137

_T = TypeVar("_T")


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _outcome(result: ExecResult) -> str:
    if result.oom_killed:
        return "oom"
    if result.timed_out:
        return "timeout"
    return "ok" if result.exit_code == 0 else "error"


def uniform_oom(sandbox: Sandbox, result: ExecResult) -> ExecResult:
    """``result`` with ``oom_killed`` set for an exit 137 (not a timeout) from an adapter that cannot tell an
    out-of-memory kill apart (no ``oom_detection``: E2B, Daytona), so every adapter is handled alike."""
    if result.oom_killed or result.timed_out or result.exit_code != OOM_EXIT:
        return result
    if "oom_detection" in sandbox.capabilities:
        return result
    return attrs.evolve(result, oom_killed=True)


class OrchestratedSandbox:
    """A session's sandbox as the orchestrator hands it out (see the module docstring)."""

    def __init__(
        self,
        orchestrator: SandboxOrchestrator,
        slot: Slot,
        *,
        index: SnapshotIndex | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._orch = orchestrator
        self._slot = slot
        self._index = index
        self._guard = guard

    def __repr__(self) -> str:
        current = self._slot.sandbox.id if self._slot.sandbox else None
        return f"OrchestratedSandbox(session={self._slot.spec.session_id!r}, sandbox={current!r})"

    @property
    def _record(self) -> SnapshotIndex:
        return self._index if self._index is not None else self._slot.index

    async def _sb(self) -> Sandbox:
        return await self._orch._warm(self._slot, self._record)

    async def _call(self, what: str, op: Callable[[Sandbox], Awaitable[_T]]) -> _T:
        """Run ``op`` on the live sandbox, lease checked first; once more on a replacement if it is gone."""
        if self._guard is not None:
            await self._guard()
        sandbox = await self._sb()
        try:
            return await op(sandbox)
        except SandboxGone as exc:
            if self._slot.released:
                raise
            gone = exc
        except SandboxError as exc:
            # An adapter may not say "gone" on every path: a plain provider failure is checked with the
            # provider (is this sandbox still there?) before it is raised.
            if (
                type(exc) is not SandboxError
                or self._slot.released
                or not await self._orch._vanished(self._slot, sandbox)
            ):
                raise
            gone = SandboxGone(
                f"{exc.message} (the provider no longer has sandbox {sandbox.id})", sandbox_id=sandbox.id
            )
        await self._orch._replace(self._slot, sandbox, what, gone, self._record)
        if self._guard is not None:
            await self._guard()
        return await op(await self._sb())

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

        async def run(sandbox: Sandbox) -> ExecResult:
            return await self._exec(sandbox, cmd, timeout=timeout, env=env, cwd=cwd, secrets=secrets, tool=tool)

        return await self._call("exec", run)

    async def _exec(
        self,
        sandbox: Sandbox,
        cmd: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None,
        cwd: str | None,
        secrets: Sequence[str],
        tool: str | None,
    ) -> ExecResult:
        spec = self._slot.spec
        fields = {"tenant_id": spec.tenant_id, "session_id": spec.session_id, "sandbox_id": sandbox.id}
        started = time.perf_counter()
        self._slot.busy += 1
        try:
            result = await sandbox.exec(cmd, timeout=timeout, env=env, cwd=cwd, secrets=secrets)
        except OpenmaError as exc:
            self._orch._emit("sandbox.exec", **fields, outcome="failed", error=exc.code, duration_ms=ms_since(started))
            if tool is not None:
                self._orch._emit("tool.call", **fields, tool=tool, outcome="failed", duration_ms=ms_since(started))
            raise
        finally:
            self._slot.busy -= 1
            self._slot.last_used = time.monotonic()
        result = uniform_oom(sandbox, result)
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
            self._orch._emit("tool.call", **fields, tool=tool, outcome=outcome, duration_ms=ms_since(started))
        await self._orch._after_exec(self._slot, sandbox, result.oom_killed, result.exit_code)
        return result

    async def start(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ProcessInfo:
        return await self._call("start", lambda sb: sb.start(cmd, env=env, cwd=cwd, secrets=secrets))

    async def process(self, process_id: str) -> ProcessInfo:
        return await self._call("process", lambda sb: sb.process(process_id))

    async def logs(self, process_id: str) -> tuple[str, str]:
        return await self._call("logs", lambda sb: sb.logs(process_id))

    async def kill(self, process_id: str) -> None:
        await self._call("kill", lambda sb: sb.kill(process_id))

    def set_secrets(self, secrets: Mapping[str, str]) -> None:
        """Registered on the live sandbox and remembered for the ones that replace it after a recycle."""
        if self._slot.released:
            raise SandboxError(f"the sandbox of session {self._slot.spec.session_id} was released")
        self._slot.secrets.update(secrets)
        if self._slot.sandbox is not None:
            self._slot.sandbox.set_secrets(secrets)

    async def read_file(self, path: str) -> bytes:
        return await self._call("read_file", lambda sb: sb.read_file(path))

    async def write_file(self, path: str, data: bytes) -> None:
        await self._call("write_file", lambda sb: sb.write_file(path, data))

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        return await self._call("list_files", lambda sb: sb.list_files(path))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._call("remove", lambda sb: sb.remove(path, recursive=recursive))

    async def exists(self, path: str) -> bool:
        return await self._call("exists", lambda sb: sb.exists(path))

    async def snapshot(self, *, ttl: float | None = SNAPSHOT_TTL) -> SnapshotRef:
        """Snapshot now, verify it, and record it as the session's latest (fenced through this handle)."""

        async def take(sandbox: Sandbox) -> SnapshotRef:
            async with self._slot.lock:
                return await self._orch._take_snapshot(self._slot, sandbox, self._record, ttl=ttl)

        return await self._call("snapshot", take)

    async def restore(self, ref: SnapshotRef) -> None:
        await self._call("restore", lambda sb: sb.restore(ref))

    async def keepalive(self, seconds: float) -> None:
        async def keep(sandbox: Sandbox) -> None:
            self._slot.last_used = time.monotonic()
            await sandbox.keepalive(seconds)

        await self._call("keepalive", keep)

    async def destroy(self) -> None:
        """Release the session's sandbox (snapshot, then destroy). Idempotent; later calls raise."""
        if self._guard is not None:
            await self._guard()
        await self._orch._release(self._slot)
