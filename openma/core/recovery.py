"""Crash recovery as a pure function over a session's log and its open model streams.

When an actor acquires a session whose previous holder did not release it cleanly, the turn that holder was
running is dead. :func:`recover_interrupted_state` says what to write so the log is consistent again:

* every open stream becomes an ``agent.message`` carrying what was streamed (``interrupted: true``), and the
  stream is finalized as ``interrupted``, oldest first;
* every ``agent.tool_use`` / ``agent.mcp_tool_use`` without a result gets an error result, appended after it;
* a custom tool call waiting for the user's ``user.custom_tool_result``, and a tool use waiting for the
  user's ``user.tool_confirmation``, are left alone: they are not orphans, the user simply has not answered;
* one ``session.warning`` records what was done;
* if the session was ``running`` or ``rescheduling``, it goes back to ``idle`` (``requires_action`` when
  something still waits on the user, else ``end_turn``), with its status event.

Results pair with uses by namespace: ``agent.tool_result.tool_use_id`` answers ``agent.tool_use``,
``agent.mcp_tool_result.mcp_tool_use_id`` answers ``agent.mcp_tool_use`` and
``user.custom_tool_result.custom_tool_use_id`` answers ``agent.custom_tool_use`` (so does an
``agent.tool_result`` the turn loop logs when an interrupt closes a custom call the user never answered).

Every event it plans has a deterministic id derived from the session and what it answers, so applying a plan
twice (say, a crash between the write and the release) appends nothing the second time; and once applied, a
new run over the updated log plans nothing at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from openma.core.ids import derived_id
from openma.core.lifecycle import STATUS_EVENT

INTERRUPTED_TOOL_TEXT: Final = (
    "(interrupted: the session's previous runner stopped before this tool finished; retry if needed)"
)
EMPTY_STREAM_TEXT: Final = "(interrupted before any output was streamed)"


@attrs.frozen
class OpenStream:
    """A model stream that was never finalized."""

    id: str
    text: str
    started_at_ms: int
    message_id: str | None = None


@attrs.frozen
class RecoveryPlan:
    """What recovery will write; empty when the log is already consistent."""

    #: Events to append, in order (each with a deterministic ``id``).
    events: list[dict[str, Any]]
    #: Stream ids to finalize as ``interrupted``.
    finalize_streams: list[str]
    #: The status to move the session to, if it must change.
    new_status: str | None
    finalized_streams: int = 0
    injected_tool_results: int = 0
    injected_mcp_tool_results: int = 0
    waiting_on_user: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.events and not self.finalize_streams and self.new_status is None


def _answered(events: list[Mapping[str, Any]]) -> tuple[set[str], set[str], set[str], dict[str, str]]:
    tool, mcp, custom = set(), set(), set()
    confirmations: dict[str, str] = {}
    for e in events:
        kind = e.get("type")
        if kind == "agent.tool_result" and isinstance(e.get("tool_use_id"), str):
            tool.add(e["tool_use_id"])
        elif kind == "agent.mcp_tool_result" and isinstance(e.get("mcp_tool_use_id"), str):
            mcp.add(e["mcp_tool_use_id"])
        elif kind == "user.custom_tool_result":
            ref = e.get("custom_tool_use_id")
            if isinstance(ref, str):
                custom.add(ref)
        elif kind == "user.tool_confirmation" and isinstance(e.get("tool_use_id"), str):
            confirmations[e["tool_use_id"]] = str(e.get("result", ""))
    return tool, mcp, custom, confirmations


def recover_interrupted_state(
    session_id: str,
    events: Iterable[Mapping[str, Any]],
    open_streams: Iterable[OpenStream],
    *,
    status: str | None = None,
) -> RecoveryPlan:
    """Plan the writes that make a crashed session's log consistent. Pure: reads its inputs, writes nothing.

    ``events`` are the payloads of the session's log in ``seq`` order (each a mapping with ``type`` and the
    event's fields); ``open_streams`` its streams still open; ``status`` its stored status.
    """
    log = list(events)
    planned: list[dict[str, Any]] = []
    finalize: list[str] = []
    done: dict[str, list[Any]] = {"finalized_streams": [], "tool_results": [], "mcp_tool_results": []}

    for stream in sorted(open_streams, key=lambda s: (s.started_at_ms, s.id)):
        message_id = stream.message_id or stream.id
        planned.append(
            {
                "id": derived_id("evt", session_id, "recovery.stream", stream.id),
                "type": "agent.message",
                "message_id": message_id,
                "content": [{"type": "text", "text": stream.text or EMPTY_STREAM_TEXT}],
                "interrupted": True,
            }
        )
        finalize.append(stream.id)
        done["finalized_streams"].append({"stream_id": stream.id, "partial_length": len(stream.text)})

    tool_done, mcp_done, custom_done, confirmations = _answered(log)
    waiting: list[str] = []
    for e in log:
        kind, use_id = e.get("type"), e.get("id")
        if not isinstance(use_id, str):
            continue
        if kind == "agent.tool_use" and use_id not in tool_done:
            if e.get("evaluated_permission") == "ask" and use_id not in confirmations:
                waiting.append(use_id)  # waits for the user's confirmation: not an orphan
                continue
            planned.append(
                {
                    "id": derived_id("evt", session_id, "recovery.tool_result", use_id),
                    "type": "agent.tool_result",
                    "tool_use_id": use_id,
                    "content": INTERRUPTED_TOOL_TEXT,
                    "is_error": True,
                }
            )
            tool_done.add(use_id)
            done["tool_results"].append({"tool_use_id": use_id, "tool_name": e.get("name")})
        elif kind == "agent.mcp_tool_use" and use_id not in mcp_done:
            planned.append(
                {
                    "id": derived_id("evt", session_id, "recovery.mcp_tool_result", use_id),
                    "type": "agent.mcp_tool_result",
                    "mcp_tool_use_id": use_id,
                    "content": INTERRUPTED_TOOL_TEXT,
                    "is_error": True,
                }
            )
            mcp_done.add(use_id)
            done["mcp_tool_results"].append({"mcp_tool_use_id": use_id, "tool_name": e.get("name")})
        elif kind == "agent.custom_tool_use" and use_id not in custom_done and use_id not in tool_done:
            waiting.append(use_id)  # a custom tool's result comes from the user: never fabricated

    new_status: str | None = None
    if status in ("running", "rescheduling"):
        new_status = "idle"
    acted = bool(planned)
    if acted or new_status:
        planned.append(
            {
                "id": derived_id("evt", session_id, "recovery.warning", *(p["id"] for p in planned)),
                "type": "session.warning",
                "source": "recovery",
                "message": "the previous runner of this session stopped mid-turn; its unfinished work was closed",
                "details": {**done, "waiting_on_user": waiting, "previous_status": status},
            }
        )
    if new_status is not None:
        stop_reason: dict[str, Any] = (
            {"type": "requires_action", "event_ids": list(waiting)} if waiting else {"type": "end_turn"}
        )
        planned.append(
            {
                "id": derived_id("evt", session_id, "recovery.status_idle", *(p["id"] for p in planned)),
                "type": STATUS_EVENT["idle"],
                "stop_reason": stop_reason,
            }
        )
    return RecoveryPlan(
        events=planned,
        finalize_streams=finalize,
        new_status=new_status,
        finalized_streams=len(done["finalized_streams"]),
        injected_tool_results=len(done["tool_results"]),
        injected_mcp_tool_results=len(done["mcp_tool_results"]),
        waiting_on_user=tuple(waiting),
    )
