"""The shell side of the remote sandboxes (E2B, Daytona): small bash scripts that make both providers behave
like the port says, whatever their daemons do.

Neither provider kills a command's process tree: E2B's envd signals only the process it started, and
Daytona's daemon kills its own child. So every command runs in **its own session** (``setsid``), and the
scripts kill the whole process group. The command deadline is enforced **inside the sandbox** by a
watchdog (a ``sleep`` in a session of its own that kills the command's group), so a timeout keeps what was
printed so far on both providers (Daytona's own exec timeout throws the output away) and works even when
the client's deadline does not fire (E2B on Python 3.11: the SDK's own deadline never fires there). The
adapters still pass the provider a deadline a little later, and keep an outer deadline of their own, for a
wrapper that cannot run at all.

Background processes are detached the same way and keep their state in files under the sandbox's state
directory (``pid``, ``out``, ``err``, ``exit``, ``killed``), so any client (another process, a reattached
adapter) can read their status and logs, and a provider call never waits on them.

The scripts report what the caller must know through a marker that carries a random per-call token on the
original stderr (merged into stdout on Daytona); the adapters strip it.
"""

from __future__ import annotations

import re
import secrets
import shlex
from typing import Final

#: Seconds the provider's own deadline trails the in-sandbox watchdog.
GRACE: Final = 5.0
#: Exit status of a command stopped at its deadline (killed by SIGKILL: 128 + 9).
TIMEOUT_EXIT: Final = 137
#: Exit status the status/kill scripts use for "no such process".
MISSING_EXIT: Final = 3
#: Where the kernel counts out-of-memory kills (``oom_kill N``): the cgroup (v2, then v1), then the machine.
OOM_COUNTERS: Final = (
    "/sys/fs/cgroup/memory.events",
    "/sys/fs/cgroup/memory/memory.oom_control",
    "/proc/vmstat",
)

_ID_RE: Final = re.compile(r"^[0-9a-f]{16,32}$")


def new_token() -> str:
    return secrets.token_hex(8)


def valid_process_id(process_id: str) -> bool:
    return bool(_ID_RE.match(process_id))


def q(value: str) -> str:
    return shlex.quote(value)


def marker(token: str, what: str) -> str:
    return f"__openma_{token}_{what}__"


def _seconds(value: float) -> str:
    return f"{max(value, 0.001):.3f}"


#: Set in every command's environment to its run token, so a stray run can be found and killed.
RUN_VAR: Final = "OPENMA_SANDBOX_RUN"


def exec_script(
    cmd: str,
    *,
    cwd: str,
    timeout: float,
    token: str,
    run_dir: str,
    stderr_limit: int | None = None,
    oom_counters: tuple[str, ...] = OOM_COUNTERS,
) -> str:
    """Run ``cmd`` in its own session under ``cwd``; kill its process group at ``timeout`` (exit 137 and the
    ``timeout`` marker) or when it ends (nothing it started outlives ``exec``).

    The deadline is a watchdog in a session of its own (``sleep``, then kill the command's group), so the
    script can ``wait`` on the command alone: ``wait -n`` on both would race with a command that ends
    before it is called. Only shell builtins run on the way, apart from ``setsid``, ``bash`` and ``sleep``.

    With ``stderr_limit`` (for a provider that merges the two streams), the command's stderr goes to a file
    that is printed after stdout, behind the ``stderr`` marker, cut at ``stderr_limit`` bytes; see
    :func:`split_stderr`.

    A command that ends with 137 while the kernel's ``oom_kill`` counter (the first of ``oom_counters``
    that has one) went up gets the ``oom`` marker: the provider's or the kernel's memory kill, told apart
    from a plain ``kill -9``.
    """
    flag = q(f"{run_dir}/{token}.timeout")
    files = " ".join(q(f) for f in oom_counters)
    counter = (
        f'oomc() {{ local f k v; for f in {files}; do [ -r "$f" ] || continue; '
        'while read -r k v; do [ "$k" = oom_kill ] && { echo "$v"; return; }; done < "$f"; done; echo none; }'
    )
    # The flag is set before the kill: the script's ``wait`` returns as soon as the group dies.
    watchdog = 'sleep "$1"; : > "$3"; kill -KILL -- -"$2" 2>/dev/null || rm -f "$3"'
    errfile = q(f"{run_dir}/{token}.err")
    to_stderr = "2>&3" if stderr_limit is None else f"2>{errfile}"
    show_stderr = (
        ""
        if stderr_limit is None
        else f"printf '%s' {q(marker(token, 'stderr'))}; [ -s {errfile} ] && head -c {stderr_limit} {errfile}; "
        f"rm -f {errfile}\n"
    )
    return f"""exec 3>&2 2>/dev/null
cd -- {q(cwd)} || {{ printf '%s' {q(marker(token, "nocwd"))} >&3; exit 1; }}
[ -d {q(run_dir)} ] || mkdir -p {q(run_dir)}
S=; command -v setsid >/dev/null && S=setsid
{counter}
o=$(oomc)
{RUN_VAR}={token} $S bash -c {q(cmd)} </dev/null {to_stderr} 3>&- & p=$!
$S bash -c {q(watchdog)} _ {_seconds(timeout)} $p {flag} </dev/null >/dev/null 3>&- & w=$!
wait $p; rc=$?
kill -KILL -- -$w || kill -KILL $w; kill -KILL -- -$p
{show_stderr}if [ -e {flag} ]; then rm -f {flag}; printf '%s' {q(marker(token, "timeout"))} >&3; exit {TIMEOUT_EXIT}; fi
if [ $rc = 137 ] && [ "$o" != none ] && [ "$(oomc)" != "$o" ]; then printf '%s' {q(marker(token, "oom"))} >&3; fi
exit $rc
"""


def reap_script(*, token: str) -> str:
    """Best effort, after the client's own deadline fired: kill every process of the run ``token``."""
    return f"""for d in /proc/[0-9]*; do
  tr '\\000' '\\n' < "$d/environ" 2>/dev/null | grep -qx {q(f"{RUN_VAR}={token}")} && kill -KILL "${{d#/proc/}}"
done 2>/dev/null; exit 0
"""


def start_script(cmd: str, *, cwd: str, proc_dir: str, token: str) -> str:
    """Detach ``cmd`` in its own session, with a monitor that records its pid and exit status in
    ``proc_dir``; returns once the pid is recorded."""
    d = q(proc_dir)
    monitor = (
        'S=$1; D=$2; $S bash -c "$3" </dev/null >"$D/out" 2>"$D/err" & p=$!; '
        'echo $p > "$D/pid.tmp"; mv "$D/pid.tmp" "$D/pid"; '
        'wait $p; echo $? > "$D/exit.tmp"; mv "$D/exit.tmp" "$D/exit"'
    )
    return f"""exec 3>&2 2>/dev/null
cd -- {q(cwd)} || {{ printf '%s' {q(marker(token, "nocwd"))} >&3; exit 1; }}
mkdir -p {d} || exit 1
: > {d}/out; : > {d}/err; printf '%s' {q(cmd)} > {d}/cmd
S=; command -v setsid >/dev/null && S=setsid
$S bash -c {q(monitor)} _ "$S" {d} {q(cmd)} </dev/null >/dev/null 2>&1 3>&- &
i=0; while [ ! -e {d}/pid ] && [ $i -lt 2000 ]; do sleep 0.005; i=$((i+1)); done
[ -e {d}/pid ]
"""


def status_script(proc_dir: str) -> str:
    """Print ``running`` or ``exited N``, then ``killed`` if it was killed, then ``---`` and the command."""
    d = q(proc_dir)
    return f"""[ -d {d} ] || exit {MISSING_EXIT}
if [ -e {d}/exit ]; then printf 'exited %s\\n' "$(cat {d}/exit)"; else echo running; fi
[ -e {d}/killed ] && echo killed
echo ---; cat {d}/cmd 2>/dev/null; exit 0
"""


def kill_script(proc_dir: str) -> str:
    """Kill the process group of a background process (idempotent) and wait briefly for its exit record."""
    d = q(proc_dir)
    return f"""[ -d {d} ] || exit {MISSING_EXIT}
[ -e {d}/exit ] && exit 0
touch {d}/killed
p=$(cat {d}/pid 2>/dev/null)
[ -n "$p" ] && {{ kill -KILL -- -$p 2>/dev/null || kill -KILL $p 2>/dev/null; }}
i=0; while [ ! -e {d}/exit ] && [ $i -lt 400 ]; do sleep 0.005; i=$((i+1)); done
exit 0
"""


def parse_status(stdout: str) -> tuple[str, int | None, bool, str]:
    """``(state, exit_code, killed, command)`` from :func:`status_script`'s output."""
    head, _, command = stdout.partition("---\n")
    lines = head.split()
    exit_code: int | None = None
    state = "running"
    if lines and lines[0] == "exited":
        state = "exited"
        try:
            exit_code = int(lines[1])
        except (IndexError, ValueError):
            exit_code = None
    killed = "killed" in lines
    return state, exit_code, killed, command


def split_stderr(stdout: str, token: str) -> tuple[str, str]:
    """``(stdout, stderr)`` from the output of an :func:`exec_script` run with ``stderr_limit``."""
    head, sep, tail = stdout.rpartition(marker(token, "stderr"))
    return (head, tail) if sep else (stdout, "")


def strip_marker(text: str, token: str) -> tuple[str, set[str]]:
    """Remove this call's markers from ``text``; return the text and which markers were found."""
    found: set[str] = set()
    for what in ("timeout", "nocwd", "oom"):
        m = marker(token, what)
        if m in text:
            found.add(what)
            text = text.replace(m, "")
    return text, found
