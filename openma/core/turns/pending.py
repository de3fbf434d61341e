"""What a session's log says a turn owes: tool calls waiting on the user, and an answer left unfinished.

Both are read from the log alone, so any process can continue a turn another one left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from openma.models import Event


def waiting_calls(log: Sequence[Event]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(calls waiting on the user, confirmed calls to act on, confirmations by tool use id), from ``log``."""
    answered = {
        e.data.get("tool_use_id") if e.type == "agent.tool_result" else e.data.get("custom_tool_use_id")
        for e in log
        if e.type in ("agent.tool_result", "user.custom_tool_result")
    }
    confirmations = {str(e.data.get("tool_use_id")): e.data for e in log if e.type == "user.tool_confirmation"}
    waiting: list[dict[str, Any]] = []
    confirmed: list[dict[str, Any]] = []
    for e in log:
        if e.type not in ("agent.tool_use", "agent.custom_tool_use") or e.id in answered:
            continue
        if e.type == "agent.custom_tool_use":
            waiting.append(e.data)
        elif e.data.get("evaluated_permission") == "ask":
            (confirmed if e.id in confirmations else waiting).append(e.data)
    return waiting, confirmed, confirmations


_ANSWER_TYPES: Final = ("agent.message", "agent.thinking", "agent.tool_use", "agent.custom_tool_use")
_OWED_TYPES: Final = (
    "user.message",
    "user.tool_confirmation",
    "user.custom_tool_result",
    "agent.tool_result",
    "agent.thread_context_compacted",
)


def cut_short(log: Sequence[Event]) -> frozenset[str]:
    """The ids of the unfinished answer at the end of ``log`` (its conversation events, oldest first) that
    leaves the last input unanswered: the ``interrupted`` ``agent.message`` events after the last thing the
    model was asked (a user's message, a tool result, a compaction's summary), when no finished answer of the
    model comes after it. Empty when the log ends with a finished answer, an interrupt, or nothing to answer.

    The loop logs a user's interrupt after the message it cut, so a message cut by the user is never
    last: only one a dead runner's stream left, closed by recovery, is."""
    ids: list[str] = []
    for event in reversed(log):
        if event.type == "agent.message" and event.data.get("interrupted"):
            ids.append(event.id)
        elif event.type in _OWED_TYPES:
            return frozenset(ids)
        elif event.type in _ANSWER_TYPES or event.type == "user.interrupt":
            return frozenset()
    return frozenset()
