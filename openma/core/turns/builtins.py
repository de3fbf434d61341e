"""The built-in tools, run in the session's sandbox: ``bash``, ``read``, ``write``, ``edit``, ``glob``, ``grep``.

Each takes the model's ``input`` mapping and returns a :class:`ToolOutcome`. A tool that fails (a missing
file, a bad input, a non-zero exit, a sandbox error) returns ``is_error=True`` with a message the model can
act on. It never raises, except for a lost lease (the turn must stop), ``StorageUnavailable`` (openma's own
store failing, say while the database restarts, is not the tool's failure: the turn stops and is run again)
and cancellation (an interrupt). Output longer than :data:`MAX_TOOL_RESULT_CHARS` is cut and marked
``truncated``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import attrs

from openma.errors import LeaseLost, OpenmaError, StorageUnavailable
from openma.ports.sandbox import ExecResult

#: The most characters of a tool's output the model is shown (the original's cap).
MAX_TOOL_RESULT_CHARS: Final = 50_000
BASH_TIMEOUT_MS: Final = 120_000
BASH_MAX_TIMEOUT_MS: Final = 600_000
READ_LIMIT: Final = 2000
#: Characters a glob pattern may hold (it is expanded by the sandbox's shell, so nothing else is let through).
_GLOB_SAFE: Final = re.compile(r"^[\w./*?\[\]{},@+=:%~ -]+$")


class ToolSandbox(Protocol):
    """What the tools need of a sandbox (an :class:`~openma.core.orchestrated.OrchestratedSandbox`)."""

    async def exec(self, cmd: str, *, timeout: float = 120.0) -> ExecResult: ...

    async def read_file(self, path: str) -> bytes: ...

    async def write_file(self, path: str, data: bytes) -> None: ...


@attrs.frozen
class ToolOutcome:
    """What a tool call produced, as the ``agent.tool_result`` will carry it."""

    content: str
    is_error: bool = False
    truncated: bool = False


class _BadInput(Exception):
    pass


def capped(text: str, *, is_error: bool = False, limit: int = MAX_TOOL_RESULT_CHARS) -> ToolOutcome:
    """``text`` as an outcome, cut at ``limit`` characters with a note saying how much was left out."""
    if len(text) <= limit:
        return ToolOutcome(text, is_error)
    note = f"\n... [output truncated: {len(text) - limit} more characters]"
    return ToolOutcome(text[:limit] + note, is_error, truncated=True)


def _str(input: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = input.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value and key != "content" and key != "new_string"):
        raise _BadInput(f"{key!r} must be a {'non-empty ' if required else ''}string")
    return value


def _int(input: Mapping[str, Any], key: str, default: int, *, low: int, high: int) -> int:
    value = input.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _BadInput(f"{key!r} must be an integer from {low} to {high}")
    return value


def _exec_text(result: ExecResult) -> str:
    parts = [result.stdout]
    if result.stderr:
        parts.append(result.stderr)
    text = "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)
    if result.timed_out:
        text += f"[timed out after {result.duration:.1f}s]\n"
    elif result.exit_code != 0:
        text += f"[exit code {result.exit_code}]\n"
    if result.truncated:
        text += "[the sandbox truncated this output]\n"
    return text


async def _bash(sandbox: ToolSandbox, input: Mapping[str, Any]) -> ToolOutcome:
    command = _str(input, "command")
    timeout = _int(input, "timeout", BASH_TIMEOUT_MS, low=1, high=BASH_MAX_TIMEOUT_MS)
    result = await sandbox.exec(str(command), timeout=timeout / 1000)
    outcome = capped(_exec_text(result) or "(no output)\n", is_error=not result.ok)
    return attrs.evolve(outcome, truncated=outcome.truncated or result.truncated)


async def _read(sandbox: ToolSandbox, input: Mapping[str, Any]) -> ToolOutcome:
    path = str(_str(input, "file_path"))
    offset = _int(input, "offset", 1, low=1, high=2**31)
    limit = _int(input, "limit", READ_LIMIT, low=1, high=2**31)
    text = (await sandbox.read_file(path)).decode("utf-8", errors="replace")
    lines = text.splitlines()
    chosen = lines[offset - 1 : offset - 1 + limit]
    body = "".join(f"{n:>6}\t{line}\n" for n, line in enumerate(chosen, start=offset))
    if offset - 1 + limit < len(lines):
        body += f"... [{len(lines) - (offset - 1 + limit)} more lines; read on with offset]\n"
    return capped(body or "(empty file)\n")


async def _write(sandbox: ToolSandbox, input: Mapping[str, Any]) -> ToolOutcome:
    path = str(_str(input, "file_path"))
    content = str(_str(input, "content"))
    data = content.encode("utf-8")
    await sandbox.write_file(path, data)
    return ToolOutcome(f"wrote {len(data)} bytes to {path}")


async def _edit(sandbox: ToolSandbox, input: Mapping[str, Any]) -> ToolOutcome:
    path = str(_str(input, "file_path"))
    old, new = str(_str(input, "old_string")), str(_str(input, "new_string"))
    replace_all = input.get("replace_all", False)
    if not isinstance(replace_all, bool):
        raise _BadInput("'replace_all' must be a boolean")
    if old == new:
        raise _BadInput("old_string and new_string are the same")
    text = (await sandbox.read_file(path)).decode("utf-8")
    count = text.count(old)
    if count == 0:
        return ToolOutcome(f"old_string was not found in {path}", is_error=True)
    if count > 1 and not replace_all:
        return ToolOutcome(
            f"old_string occurs {count} times in {path}; give more context or set replace_all", is_error=True
        )
    await sandbox.write_file(path, text.replace(old, new).encode("utf-8"))
    return ToolOutcome(f"replaced {count if replace_all else 1} occurrence(s) in {path}")


async def _glob(sandbox: ToolSandbox, input: Mapping[str, Any]) -> ToolOutcome:
    pattern = str(_str(input, "pattern"))
    path = _str(input, "path", required=False) or "."
    if not _GLOB_SAFE.match(pattern) or pattern.startswith("-"):
        raise _BadInput("the glob pattern holds characters a glob does not use")
    script = f'shopt -s globstar nullglob dotglob; cd -- {shlex.quote(path)} && for f in {pattern}; do echo "$f"; done'
    result = await sandbox.exec(f"bash -c {shlex.quote(script)}", timeout=60)
    if not result.ok:
        return capped(_exec_text(result), is_error=True)
    return capped(result.stdout or "(no files match)\n")


async def _grep(sandbox: ToolSandbox, input: Mapping[str, Any]) -> ToolOutcome:
    pattern = str(_str(input, "pattern"))
    path = _str(input, "path", required=False) or "."
    glob = _str(input, "glob", required=False)
    include = f" --include={shlex.quote(glob)}" if glob else ""
    cmd = f"grep -rnIE{include} -e {shlex.quote(pattern)} -- {shlex.quote(path)}"
    result = await sandbox.exec(cmd, timeout=60)
    if result.exit_code == 1 and not result.timed_out:
        return ToolOutcome("(no matches)\n")
    if not result.ok:
        return capped(_exec_text(result), is_error=True)
    return capped(result.stdout)


BUILTINS: Final[dict[str, Callable[[ToolSandbox, Mapping[str, Any]], Awaitable[ToolOutcome]]]] = {
    "bash": _bash,
    "read": _read,
    "write": _write,
    "edit": _edit,
    "glob": _glob,
    "grep": _grep,
}


async def run_builtin(sandbox: ToolSandbox, name: str, input: Mapping[str, Any]) -> ToolOutcome:
    """Run built-in tool ``name``; failures come back as ``is_error`` outcomes (see the module docstring)."""
    tool = BUILTINS.get(name)
    if tool is None:
        return ToolOutcome(f"unknown tool {name!r}", is_error=True)
    try:
        return await tool(sandbox, input)
    except _BadInput as exc:
        return ToolOutcome(f"invalid input for {name}: {exc}", is_error=True)
    except (LeaseLost, StorageUnavailable):
        raise
    except UnicodeDecodeError:
        return ToolOutcome(f"{input.get('file_path')} is not UTF-8 text", is_error=True)
    except OpenmaError as exc:
        return ToolOutcome(f"{name} failed: {exc.code}: {exc}"[:2000], is_error=True)
