"""Resource limits of the local sandbox's commands: the shell's ``ulimit``, the one way they are set.

Every command runs as ``<shell> -c '<ulimit prefix> <command>'``: the limits are set by the very shell that
runs the command, before it runs, with no extra process (a command costs what ``sh -c`` costs), and every
process it starts inherits them. Data segment (``-d``), open files (``-n``) and CPU seconds (``-t``) are
spelled alike by every common shell; processes per user is ``-p`` in dash and BusyBox and ``-u`` in bash,
zsh and ksh, so the spelling is found by asking the shell once. A limit the shell cannot set is a
:class:`~openma.errors.ConfigError` when the provider is built, naming the setting that turns it off:
never a command that silently runs without it.
"""

from __future__ import annotations

import functools
import os
import resource
import subprocess
from collections.abc import Sequence
from typing import Final

import attrs

from openma.adapters.sandboxes._config import SHELL, LocalLimits
from openma.errors import ConfigError

#: ``ulimit`` flags every common shell spells alike; the processes limit has two spellings.
_FLAGS: Final = {resource.RLIMIT_DATA: "-d", resource.RLIMIT_NOFILE: "-n", resource.RLIMIT_CPU: "-t"}
_NPROC: Final = getattr(resource, "RLIMIT_NPROC", None)
_SETTING: Final = {
    resource.RLIMIT_DATA: "memory_bytes",
    resource.RLIMIT_NOFILE: "open_files",
    resource.RLIMIT_CPU: "cpu_seconds",
}


def rlimits(limits: LocalLimits) -> list[tuple[int, int, int]]:
    """``(resource, soft, hard)`` triples, never above the host's own hard limits (children inherit them)."""

    def clip(res: int, value: int) -> int:
        hard = resource.getrlimit(res)[1]
        return value if hard == resource.RLIM_INFINITY else min(value, hard)

    out = []
    if limits.memory_bytes:
        data = clip(resource.RLIMIT_DATA, 2 * limits.memory_bytes)
        out.append((resource.RLIMIT_DATA, data, data))
    if limits.cpu_seconds:
        hard = clip(resource.RLIMIT_CPU, limits.cpu_seconds + 1)
        out.append((resource.RLIMIT_CPU, min(limits.cpu_seconds, hard), hard))
    if limits.open_files:
        n = clip(resource.RLIMIT_NOFILE, limits.open_files)
        out.append((resource.RLIMIT_NOFILE, n, n))
    if limits.processes and _NPROC is not None:
        n = clip(_NPROC, limits.processes)
        out.append((_NPROC, n, n))
    return out


@attrs.frozen
class Launcher:
    """How a command is started: ``shell -c`` with the ``ulimit`` prefix in front of it."""

    shell: str = SHELL
    prefix: str = ""

    def argv(self, cmd: str) -> list[str]:
        return [self.shell, "-c", self.prefix + cmd]


def _ulimit(flag: str, res: int, soft: int, hard: int) -> str:
    scale = 1024 if res == resource.RLIMIT_DATA else 1  # ulimit -d counts KiB
    if soft == hard:
        return f"ulimit {flag} {soft // scale}"
    return f"ulimit {flag} {hard // scale}; ulimit -S {flag} {soft // scale}"


def _script(triples: Sequence[tuple[int, int, int]], nproc_flag: str) -> list[str]:
    return [_ulimit(_FLAGS.get(res, nproc_flag), res, soft, hard) for res, soft, hard in triples]


def _refusal(shell: str, script: str) -> str | None:
    """What the shell said when it could not run ``script`` (each ``ulimit`` must succeed), else ``None``."""
    try:
        done = subprocess.run(
            [shell, "-c", script.replace("; ", " && ") + " && exit 0 || exit 1"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    return done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"


@functools.cache
def _prefix(shell: str, triples: tuple[tuple[int, int, int], ...]) -> str:
    name = os.path.basename(os.path.realpath(shell))
    candidates = ("-p", "-u") if name in ("dash", "busybox", "ash") else ("-u", "-p")
    for flag in candidates:
        parts = _script(triples, flag)
        if _refusal(shell, "; ".join(parts)) is None:
            return "; ".join(parts) + "; "
    # Name the limit that cannot be set (the processes one with either spelling).
    for res, soft, hard in triples:
        if res in _FLAGS:
            why = _refusal(shell, "; ".join(_script([(res, soft, hard)], "-u")))
            setting = _SETTING[res]
        else:
            why = _refusal(shell, "; ".join(_script([(res, soft, hard)], candidates[0])))
            if why is not None:
                why = _refusal(shell, "; ".join(_script([(res, soft, hard)], candidates[1])))
            setting = "processes"
        if why is not None:
            raise ConfigError(
                f"{shell} cannot set the local sandbox's {setting} limit with ulimit ({why}); "
                f"set local_sandbox_{setting}=0 (LocalLimits({setting}=0)) to run commands without it"
            )
    raise ConfigError(f"{shell} cannot set the local sandbox's limits with ulimit")


def launcher_for(limits: LocalLimits, *, shell: str = SHELL) -> Launcher:
    """The launcher of a provider's commands; ``ConfigError`` when the shell cannot set a limit."""
    triples = rlimits(limits)
    if not triples:
        return Launcher(shell)
    return Launcher(shell, _prefix(shell, tuple(triples)))
