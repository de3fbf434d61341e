"""Configuration and fixed names of the local sandbox (:mod:`openma.adapters.sandboxes.local`)."""

from __future__ import annotations

from typing import Final

import attrs

SHELL: Final = "/bin/sh"
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Host variables a command may see (their values are copied when the host has them).
DEFAULT_PASS_ENV: Final = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
#: Never passed through, whatever the allowlist says.
NEVER_PASS: Final = frozenset({"OPENMA_ROOT_SECRET"})
#: Set in every command's environment to ``<sandbox id>.<run>``, so a process that left its group is found.
MARKER: Final = "OPENMA_SANDBOX_RUN"
#: Seconds between two samples of a command's resident memory.
WATCH_INTERVAL: Final = 0.1
#: Seconds ``process``/``logs`` wait for a finished process's last output to be read.
SETTLE: Final = 0.5


@attrs.frozen
class LocalLimits:
    """Per-command resource limits; 0 turns one off.

    They are set with the shell's ``ulimit`` in front of every command; a limit the shell cannot set is a
    :class:`~openma.errors.ConfigError` when the provider is built (turn that limit off with 0).
    """

    #: Resident memory of one command's processes together (bytes); each process's data segment is also
    #: capped at twice this, so a single huge allocation fails inside the program instead of on the host.
    memory_bytes: int = 2 << 30
    #: CPU seconds per process (SIGXCPU at the limit, SIGKILL a second later).
    cpu_seconds: int = 3600
    #: Open file descriptors per process.
    open_files: int = 1024
    #: Processes of the host user (RLIMIT_NPROC counts them all; root is exempt).
    processes: int = 4096

    @property
    def any(self) -> bool:
        return any((self.memory_bytes, self.cpu_seconds, self.open_files, self.processes))


@attrs.frozen
class LocalSandboxConfig:
    root: str
    #: Bytes kept of each of stdout and stderr (of an exec, or of a background process's logs).
    output_bytes: int = 1 << 20
    limits: LocalLimits = LocalLimits()
    #: Seconds between SIGTERM and SIGKILL when stopping a command.
    kill_grace: float = 2.0
    pass_env: tuple[str, ...] = DEFAULT_PASS_ENV
    #: Seconds an exec waits, after its shell exited, for processes it left behind to release its output.
    linger: float = 0.1
