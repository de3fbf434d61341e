"""The Sandbox port: where a session's tools run, uniform across providers.

A host switches between LocalSubprocess, E2B and Daytona (or a registered third-party provider) without
changing code: every adapter returns the same :class:`ExecResult`, raises the same errors, and declares what
it can do in :attr:`Sandbox.capabilities` (declared, never probed). ``openma.testing.SandboxContract`` checks
an adapter against this contract and skips what it does not declare.

Contract for a :class:`Sandbox`:

* ``exec(cmd, timeout=, env=, cwd=, secrets=)`` runs ``cmd`` through a POSIX shell in the workspace (or
  ``cwd``, relative to it) and returns when it ends. ``exit_code`` is the command's real exit status (128+N
  when killed by signal N). A command still running at ``timeout`` seconds is stopped **with everything it
  started** (its whole process tree), and the result has ``timed_out=True`` and what it printed so far;
  ``exec`` does not raise for a non-zero exit or a timeout. Output beyond the adapter's cap is cut and
  ``truncated=True``. ``oom_killed=True`` when the kernel or provider killed it for memory (``exit_code``
  137). Provider failures raise :class:`~openma.errors.SandboxError`; an operation that could not complete
  in time (not a command) raises :class:`~openma.errors.SandboxTimeout`.
* ``env`` adds variables for that command only. The sandbox never inherits the host's environment.
* Secrets: ``set_secrets({NAME: value})`` registers values; a command gets ``NAME`` in its environment only
  when it lists it in ``secrets=[...]``; every value registered is replaced by ``***`` in every
  ``ExecResult``, process log, and anything openma stores (whatever command printed it).
* Background processes: ``start`` returns a :class:`ProcessInfo` at once; ``process``/``logs``/``kill`` use
  its ``id``. ``kill`` stops the whole process tree and is idempotent.
* Files are bytes in and out. Paths are relative to the workspace (absolute paths are accepted only when the
  adapter declares ``absolute_paths``); an adapter that confines paths rejects ``..`` escapes, absolute
  paths outside the workspace and symlink escapes with :class:`~openma.errors.InvalidInput`. A missing file
  is :class:`~openma.errors.NotFound`. ``write_file`` creates parent directories.
* ``snapshot(ttl=)`` stores the workspace as a tarball in the BlobStore and returns its :class:`SnapshotRef`;
  ``restore(ref)`` replaces the workspace with it, in place. Both are portable (tar inside the sandbox).
* ``keepalive(seconds)``: the sandbox stays alive for at least ``seconds`` more.
* ``destroy()`` stops everything and frees the provider's resources; it is idempotent, and every other
  call afterwards raises ``SandboxError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import attrs

from openma.ports.egress import EgressEndpoint

#: Capabilities an adapter may declare.
CAPABILITIES: Final[dict[str, str]] = {
    "background": "start/process/logs/kill background processes",
    "separate_stderr": "stdout and stderr come back separately (else stderr is merged into stdout)",
    "secrets": "command-scoped secrets",
    "snapshot": "workspace snapshot and restore through the BlobStore",
    "keepalive": "keepalive(seconds) extends the sandbox's life",
    "resource_limits": "memory, CPU time, open files and process limits are enforced",
    "oom_detection": "an out-of-memory kill is reported with oom_killed=True",
    "path_confinement": "file paths cannot escape the workspace (.., absolute, symlinks)",
    "absolute_paths": "file operations accept absolute paths",
    "isolation": "commands cannot see or touch the host (a VM or container boundary)",
}

ProcessStatus = Literal["running", "exited", "killed"]

#: The exit status of a command killed by SIGKILL (128 + 9), which is how an out-of-memory kill ends.
OOM_EXIT: Final = 137


def is_oom_kill(exit_code: int, *, timed_out: bool, memory_kill_seen: bool) -> bool:
    """The one rule every adapter sets ``ExecResult.oom_killed`` by, so the orchestrator treats a local and a
    remote out-of-memory kill alike: the command died of SIGKILL (137), not at its deadline, and the adapter
    saw a memory kill happen while it ran (its own memory watchdog, or the kernel's ``oom_kill`` counter
    going up). A plain ``kill -9`` is not one."""
    return exit_code == OOM_EXIT and not timed_out and memory_kill_seen


@attrs.frozen
class ExecResult:
    """What a command did. Uniform across adapters."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    #: Wall-clock seconds the command ran.
    duration: float = 0.0
    oom_killed: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def __repr__(self) -> str:
        flags = "".join(f", {n}=True" for n in ("timed_out", "truncated", "oom_killed") if getattr(self, n))
        return (
            f"ExecResult(exit_code={self.exit_code}, stdout={_short(self.stdout)}, "
            f"stderr={_short(self.stderr)}, duration={self.duration:.3f}{flags})"
        )


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


@attrs.frozen
class ProcessInfo:
    """A background process."""

    id: str
    command: str
    status: ProcessStatus
    exit_code: int | None = None


@attrs.frozen
class FileInfo:
    """An entry of ``list_files``; ``path`` is relative to the listed directory's workspace root."""

    path: str
    is_dir: bool
    size: int
    modified_at: datetime | None = None


@attrs.frozen
class SnapshotRef:
    """A workspace tarball in the BlobStore."""

    key: str
    size: int
    sha256: str
    created_at: datetime
    expires_at: datetime | None = None


@attrs.frozen
class SandboxSpec:
    """What to create: who it is for, and how.

    ``labels`` are attached to the provider's sandbox (always including ``openma`` = ``"1"``, the tenant and
    the session), so leaked sandboxes can be found and swept.
    """

    tenant_id: str
    session_id: str
    #: Provider-specific image / template / snapshot name; ``None`` for the provider's default.
    image: str | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    #: Seconds the sandbox lives without a keepalive (providers that have lifetimes).
    lifetime: float = 3600.0
    #: Provider-specific extras from the environment's config.
    options: Mapping[str, Any] = attrs.field(factory=dict)
    #: The egress proxy this sandbox's outbound traffic must go through (``None``: egress is off).
    egress: EgressEndpoint | None = None


class Sandbox(Protocol):
    """One session's sandbox. See the module docstring for the contract."""

    @property
    def id(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[str]: ...

    async def exec(
        self,
        cmd: str,
        *,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ExecResult: ...

    async def start(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        secrets: Sequence[str] = (),
    ) -> ProcessInfo: ...

    async def process(self, process_id: str) -> ProcessInfo: ...

    async def logs(self, process_id: str) -> tuple[str, str]:
        """``(stdout, stderr)`` so far, masked."""
        ...

    async def kill(self, process_id: str) -> None: ...

    def set_secrets(self, secrets: Mapping[str, str]) -> None: ...

    async def read_file(self, path: str) -> bytes: ...

    async def write_file(self, path: str, data: bytes) -> None: ...

    async def list_files(self, path: str = ".") -> list[FileInfo]: ...

    async def remove(self, path: str, *, recursive: bool = False) -> None: ...

    async def exists(self, path: str) -> bool: ...

    async def snapshot(self, *, ttl: float | None = 7 * 24 * 3600) -> SnapshotRef: ...

    async def restore(self, ref: SnapshotRef) -> None: ...

    async def keepalive(self, seconds: float) -> None: ...

    async def destroy(self) -> None: ...


class SandboxProvider(Protocol):
    """Creates and finds sandboxes of one kind. Opened by the factory registered under its name
    (``openma.sandboxes`` entry points): ``await factory(settings, blobs=...) -> SandboxProvider``."""

    name: str

    async def create(self, spec: SandboxSpec) -> Sandbox: ...

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> Sandbox:
        """Reconnect to a live sandbox (``NotFound`` when it is gone)."""
        ...

    async def list_labeled(self, labels: Mapping[str, str]) -> list[tuple[str, datetime | None]]:
        """``(sandbox id, created_at)`` of the provider's sandboxes carrying every label in ``labels``."""
        ...

    async def destroy_id(self, sandbox_id: str) -> None:
        """Destroy a sandbox by id (idempotent); for the leak sweeper."""
        ...

    async def aclose(self) -> None: ...
