"""The conversation a model sees, built from the session's log alone (so any process can continue a turn).

:func:`build_messages` maps logged events onto the Model port's neutral messages:

* ``user.message`` → a user message with its content blocks;
* ``agent.thinking`` / ``agent.message`` / ``agent.tool_use`` / ``agent.custom_tool_use`` → the blocks of one
  assistant message per model step;
* ``agent.tool_result`` and ``user.custom_tool_result`` → ``tool_result`` blocks of a user message
  (a denied confirmation is answered with an ``agent.tool_result`` by the loop, so it needs no case here);
* tool results lead the user message they are merged into (a result logged after a user's message, as when
  an interrupt closes a call, still answers the call first);
* the latest ``agent.thread_context_compacted`` replaces everything up to its ``replaced_range.end_seq`` with
  its summary, as a user message.

Consecutive messages of one role are merged, so roles alternate as providers require. Other events (status,
spans, warnings, errors) are not part of the conversation.

:func:`plan_compaction` keeps the history under a size budget: when the estimate exceeds it, the oldest whole
steps (cut only where no tool call waits for its result: before a ``user.message`` or a model step's
``span.model_request_start``) are replaced by a summary, logged as ``agent.thread_context_compacted``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from openma.models import Event

#: The history's size estimate, in tokens, above which older steps are compacted.
DEFAULT_BUDGET_TOKENS: Final = 150_000
#: Characters per token in the estimate (a cheap, provider-neutral heuristic).
CHARS_PER_TOKEN: Final = 4
_SUMMARY_LINE: Final = 200


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [dict(b) for b in content or () if isinstance(b, Mapping)]


def _block(data: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    kind = data.get("type")
    if kind == "user.message":
        return "user", _blocks(data.get("content"))
    if kind == "agent.message":
        return "assistant", [b for b in _blocks(data.get("content")) if b.get("type") == "text" and b.get("text")]
    if kind == "agent.thinking":
        block: dict[str, Any] = {"type": "thinking", "thinking": str(data.get("text") or "")}
        if data.get("signature"):
            block["signature"] = data["signature"]
        return "assistant", [block]
    if kind in ("agent.tool_use", "agent.custom_tool_use"):
        use = {"type": "tool_use", "id": data.get("id"), "name": data.get("name"), "input": data.get("input") or {}}
        return "assistant", [use]
    if kind == "agent.tool_result":
        return "user", [_result(data.get("tool_use_id"), data.get("content"), data.get("is_error"))]
    if kind == "user.custom_tool_result":
        return "user", [_result(data.get("custom_tool_use_id"), data.get("content"), data.get("is_error"))]
    return None


def _result(use_id: Any, content: Any, is_error: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use_id, "content": content if content else ""}
    if not isinstance(block["content"], str):
        block["content"] = _blocks(block["content"])
    if is_error:
        block["is_error"] = True
    return block


def _merge(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Append ``blocks`` as ``role``'s, into the last message when it is that role's; in a user message,
    tool results come before anything else (providers require the answers to a call to lead)."""
    if messages and messages[-1]["role"] == role:
        content = messages[-1]["content"]
        content.extend(blocks)
        if role == "user" and any(b.get("type") == "tool_result" for b in blocks):
            content.sort(key=lambda b: b.get("type") != "tool_result")
    else:
        messages.append({"role": role, "content": list(blocks)})


def _summary_message(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": _blocks(data.get("summary"))}


def build_messages(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The neutral messages for ``events`` (a session's log, oldest first; see the module docstring)."""
    start = 0
    messages: list[dict[str, Any]] = []
    for i in range(len(events) - 1, -1, -1):
        if events[i].type == "agent.thread_context_compacted":
            data = events[i].data
            end_seq = int((data.get("replaced_range") or {}).get("end_seq", 0))
            messages.append(_summary_message(data))
            start = next((j for j, e in enumerate(events) if e.seq > end_seq), len(events))
            break
    for event in events[start:]:
        mapped = _block(event.data)
        if mapped is None or not mapped[1]:
            continue
        role, blocks = mapped
        _merge(messages, role, blocks)
    return messages


class Conversation:
    """:func:`build_messages` kept up to date event by event, with a running size estimate, so a step costs
    the events it added rather than the whole history. :meth:`rebuild` starts over (after a compaction).

    Only the last message ever changes (merging blocks into it); the ones before it are final, so a
    :meth:`snapshot` shares them and copies the last one alone."""

    def __init__(self, events: Sequence[Event] = ()) -> None:
        self.messages: list[dict[str, Any]] = []
        self.chars = 0
        self.rebuild(events)

    def rebuild(self, events: Sequence[Event]) -> None:
        self.messages = build_messages(events)
        self.chars = sum(len(str(m["content"])) for m in self.messages)

    def add(self, data: Mapping[str, Any]) -> None:
        """Add one logged event's data (an event's ``data``, or the dict about to be appended)."""
        if data.get("type") == "agent.thread_context_compacted":
            raise ValueError("a compaction replaces the history: rebuild the conversation from the log")
        mapped = _block(data)
        if mapped is None or not mapped[1]:
            return
        role, blocks = mapped
        _merge(self.messages, role, blocks)
        self.chars += len(str(blocks))

    def tokens(self, system: str = "") -> int:
        """The size estimate of :func:`estimate_tokens`, kept as events are added."""
        return (self.chars + len(system)) // CHARS_PER_TOKEN

    def snapshot(self) -> list[dict[str, Any]]:
        """The messages as they are now (later additions do not change the returned lists)."""
        if not self.messages:
            return []
        last = self.messages[-1]
        return [*self.messages[:-1], {"role": last["role"], "content": list(last["content"])}]


def estimate_tokens(messages: Sequence[Mapping[str, Any]], system: str = "") -> int:
    """A cheap size estimate of a request, in tokens."""
    return (sum(len(str(m.get("content"))) for m in messages) + len(system)) // CHARS_PER_TOKEN


def _line(data: Mapping[str, Any]) -> str | None:
    kind = data.get("type")
    if kind in ("user.message", "agent.message"):
        text = " ".join(str(b.get("text", "")) for b in _blocks(data.get("content")) if b.get("type") == "text")
        who = "user" if kind == "user.message" else "assistant"
        return f"{who}: {' '.join(text.split())[:_SUMMARY_LINE]}"
    if kind in ("agent.tool_use", "agent.custom_tool_use"):
        return f"tool call {data.get('name')}: {str(data.get('input'))[:_SUMMARY_LINE]}"
    return None


def plan_compaction(
    events: Sequence[Event], *, system: str = "", budget_tokens: int = DEFAULT_BUDGET_TOKENS
) -> dict[str, Any] | None:
    """The ``agent.thread_context_compacted`` event that brings ``events`` under the budget, or ``None``.

    The newest steps are kept, filling up to half the budget; the rest, up to a clean cut, is summarised
    (one line per message and tool call, oldest dropped first if the summary itself is too large). ``None``
    when the history fits, or when no clean cut would leave anything out.
    """
    messages = build_messages(events)
    pre_tokens = estimate_tokens(messages, system)
    if pre_tokens <= budget_tokens:
        return None
    start = 0
    for i in range(len(events) - 1, -1, -1):
        if events[i].type == "agent.thread_context_compacted":
            start = next(
                (j for j, e in enumerate(events) if e.seq > int(events[i].data["replaced_range"]["end_seq"])),
                len(events),
            )
            break
    cuts = [i for i in range(start + 1, len(events)) if events[i].type in ("user.message", "span.model_request_start")]
    keep_budget = budget_tokens // 2
    cut = None
    for i in cuts:  # the earliest cut whose kept tail fits in half the budget
        if estimate_tokens(build_messages(events[i:])) <= keep_budget:
            cut = i
            break
    if cut is None:
        cut = cuts[-1] if cuts else None
    if cut is None:
        return None
    replaced = events[start:cut]
    lines = [line for e in replaced if (line := _line(e.data))]
    previous = messages[0]["content"] if start and messages else []
    text = "Earlier in this session (compacted):\n" + "\n".join(lines)
    limit = keep_budget * CHARS_PER_TOKEN // 2
    if len(text) > limit:
        text = "Earlier in this session (compacted, oldest left out):\n..." + text[-limit:]
    summary = [*previous, {"type": "text", "text": text}][-4:]
    kept = build_messages(events[cut:])  # the summary, a user message, merges into a leading user message
    return {
        "type": "agent.thread_context_compacted",
        "original_message_count": len(messages),
        "compacted_message_count": len(kept) + (0 if kept and kept[0]["role"] == "user" else 1),
        "summary": summary,
        "replaced_range": {
            "start_seq": replaced[0].seq if replaced else events[cut].seq,
            "end_seq": events[cut].seq - 1,
        },
        "trigger": "auto",
        "pre_tokens": pre_tokens,
    }
