"""Which tools an agent may call, read from its frozen ``tools`` list, in the Model port's neutral shape.

An agent's ``tools`` holds the Managed Agents entries:

* ``{"type": "agent_toolset_20260401", "default_config": {"enabled", "permission_policy": {"type"}},
  "configs": [{"name", "enabled", "permission_policy"}]}`` enables the built-in tools (``bash``, ``read``,
  ``write``, ``edit``, ``glob``, ``grep``; all enabled and ``always_allow`` unless configured otherwise);
* ``{"type": "custom", "name", "description", "input_schema"}`` is a tool the host answers with a
  ``user.custom_tool_result``.

``web_fetch`` belongs to the toolset but needs the egress proxy; until a platform has one it is not offered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from openma.errors import InvalidInput

TOOLSET_TYPE: Final = "agent_toolset_20260401"
Permission = Literal["always_allow", "always_ask"]
_PERMISSIONS: Final = ("always_allow", "always_ask")


def _schema(required: Sequence[str], **props: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": kind, "description": text} for name, (kind, text) in props.items()},
        "required": list(required),
    }


#: name → (description, input schema) of each built-in tool.
BUILTIN_TOOLS: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "bash": (
        "Run a shell command in the session's workspace; returns its output and exit code.",
        _schema(
            ["command"],
            command=("string", "The command to run (bash)."),
            timeout=("integer", "Milliseconds before the command is stopped (default 120000, max 600000)."),
        ),
    ),
    "read": (
        "Read a text file of the workspace; lines are numbered from 1.",
        _schema(
            ["file_path"],
            file_path=("string", "The file, relative to the workspace."),
            offset=("integer", "The first line to read (1-based)."),
            limit=("integer", "How many lines to read (default 2000)."),
        ),
    ),
    "write": (
        "Create or overwrite a file of the workspace.",
        _schema(
            ["file_path", "content"],
            file_path=("string", "The file, relative to the workspace."),
            content=("string", "The whole new content."),
        ),
    ),
    "edit": (
        "Replace text in a file: old_string must occur once, unless replace_all is true.",
        _schema(
            ["file_path", "old_string", "new_string"],
            file_path=("string", "The file, relative to the workspace."),
            old_string=("string", "The exact text to replace."),
            new_string=("string", "The text to put instead."),
            replace_all=("boolean", "Replace every occurrence."),
        ),
    ),
    "glob": (
        "List the workspace's files matching a glob pattern (** matches directories recursively).",
        _schema(
            ["pattern"],
            pattern=("string", "The glob pattern, such as src/**/*.py."),
            path=("string", "The directory to search from (default: the workspace)."),
        ),
    ),
    "grep": (
        "Search file contents with an extended regular expression; returns file:line:text matches.",
        _schema(
            ["pattern"],
            pattern=("string", "The regular expression."),
            path=("string", "The file or directory to search (default: the workspace)."),
            glob=("string", "Only files whose name matches this glob, such as *.py."),
        ),
    ),
}


@attrs.frozen
class ToolSpec:
    """One tool the model may call."""

    name: str
    kind: Literal["builtin", "custom"]
    permission: Permission
    description: str
    input_schema: Mapping[str, Any]

    def neutral(self) -> dict[str, Any]:
        """The Model port's shape: ``{"name", "description", "input_schema"}``."""
        return {"name": self.name, "description": self.description, "input_schema": dict(self.input_schema)}


def _policy(config: Mapping[str, Any], default: Permission) -> Permission:
    policy = config.get("permission_policy")
    if policy is None:
        return default
    kind = policy.get("type") if isinstance(policy, Mapping) else policy
    if kind not in _PERMISSIONS:
        raise InvalidInput(f"unknown permission_policy {kind!r}; valid: {', '.join(_PERMISSIONS)}", field="tools")
    return kind  # type: ignore[no-any-return]


def _toolset(entry: Mapping[str, Any]) -> list[ToolSpec]:
    default = entry.get("default_config") or {}
    enabled_default = bool(default.get("enabled", True))
    policy_default = _policy(default, "always_allow")
    configs = {c.get("name"): c for c in entry.get("configs") or () if isinstance(c, Mapping)}
    out = []
    for name, (description, schema) in BUILTIN_TOOLS.items():
        config = configs.get(name, {})
        if bool(config.get("enabled", enabled_default)):
            out.append(ToolSpec(name, "builtin", _policy(config, policy_default), description, schema))
    return out


def agent_tools(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, ToolSpec]:
    """The tools an agent snapshot's ``tools`` list enables, by name (``InvalidInput`` for a malformed entry)."""
    out: dict[str, ToolSpec] = {}
    for entry in tools or ():
        kind = entry.get("type")
        if kind == TOOLSET_TYPE:
            out.update((spec.name, spec) for spec in _toolset(entry))
        elif kind == "custom":
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidInput("a custom tool needs a name", field="tools")
            schema = entry.get("input_schema") or {"type": "object", "properties": {}}
            out[name] = ToolSpec(name, "custom", "always_allow", str(entry.get("description") or ""), dict(schema))
        # other entry types (MCP toolsets, ...) are offered by their own issues
    return out
