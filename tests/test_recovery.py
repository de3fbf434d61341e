"""recover_interrupted_state: the original platform's 14 recovery scenarios, plus the cases its bugs call for."""

from __future__ import annotations

from typing import Any

from openma.core.recovery import EMPTY_STREAM_TEXT, OpenStream, RecoveryPlan, recover_interrupted_state

SID = "ses_01h0000000000000000000000z"


def use(uid: str, name: str = "bash", **extra: Any) -> dict[str, Any]:
    return {"type": "agent.tool_use", "id": uid, "name": name, "input": {}, **extra}


def result(uid: str) -> dict[str, Any]:
    return {"type": "agent.tool_result", "tool_use_id": uid, "content": "ok"}


def mcp_use(uid: str) -> dict[str, Any]:
    return {"type": "agent.mcp_tool_use", "id": uid, "name": "mcp_x_call", "mcp_server_name": "x", "input": {}}


def custom_use(uid: str) -> dict[str, Any]:
    return {"type": "agent.custom_tool_use", "id": uid, "name": "lookup", "input": {}}


def apply(log: list[dict[str, Any]], streams: list[OpenStream], plan: RecoveryPlan) -> list[OpenStream]:
    """What the actor does with a plan: append its events, finalize its streams."""
    known = {e.get("id") for e in log}
    log.extend(e for e in plan.events if e["id"] not in known)
    return [s for s in streams if s.id not in plan.finalize_streams]


def kinds(plan: RecoveryPlan) -> list[str]:
    return [e["type"] for e in plan.events]


# 1
def test_empty_state_plans_nothing() -> None:
    plan = recover_interrupted_state(SID, [], [])
    assert plan.empty
    assert plan.events == [] and plan.finalize_streams == []


# 2
def test_stuck_stream_becomes_a_message_with_its_text() -> None:
    plan = recover_interrupted_state(SID, [], [OpenStream("stm_1", "Hello, world", 10, message_id="msg_1")])
    message = plan.events[0]
    assert message["type"] == "agent.message" and message["message_id"] == "msg_1"
    assert message["content"] == [{"type": "text", "text": "Hello, world"}] and message["interrupted"] is True
    assert plan.finalize_streams == ["stm_1"] and plan.finalized_streams == 1
    warning = plan.events[1]
    assert warning["type"] == "session.warning"
    assert warning["details"]["finalized_streams"] == [{"stream_id": "stm_1", "partial_length": 12}]


# 3
def test_stuck_stream_without_chunks_gets_a_placeholder() -> None:
    plan = recover_interrupted_state(SID, [], [OpenStream("stm_1", "", 10)])
    assert plan.events[0]["content"][0]["text"] == EMPTY_STREAM_TEXT
    assert "interrupted" in EMPTY_STREAM_TEXT
    assert plan.events[0]["message_id"] == "stm_1"


# 4
def test_several_stuck_streams_are_finalized_oldest_first() -> None:
    streams = [OpenStream("stm_c", "c", 30), OpenStream("stm_a", "a", 10), OpenStream("stm_b", "b", 20)]
    plan = recover_interrupted_state(SID, [], streams)
    assert plan.finalize_streams == ["stm_a", "stm_b", "stm_c"]
    assert [e["content"][0]["text"] for e in plan.events if e["type"] == "agent.message"] == ["a", "b", "c"]
    assert kinds(plan).count("session.warning") == 1


# 5
def test_orphan_tool_use_gets_an_error_result_after_it() -> None:
    plan = recover_interrupted_state(SID, [use("tu_1")], [])
    assert kinds(plan) == ["agent.tool_result", "session.warning"]
    assert plan.events[0]["tool_use_id"] == "tu_1" and plan.events[0]["is_error"] is True
    assert "interrupted" in plan.events[0]["content"]


# 6
def test_orphan_mcp_tool_use_gets_an_error_result() -> None:
    plan = recover_interrupted_state(SID, [mcp_use("mcp_1")], [])
    assert plan.events[0]["type"] == "agent.mcp_tool_result"
    assert plan.events[0]["mcp_tool_use_id"] == "mcp_1" and plan.events[0]["is_error"] is True


# 7
def test_orphan_custom_tool_use_is_never_fabricated() -> None:
    plan = recover_interrupted_state(SID, [custom_use("ctu_1")], [])
    assert plan.events == [] and plan.waiting_on_user == ("ctu_1",)


# 8
def test_resolved_tool_use_is_untouched() -> None:
    assert recover_interrupted_state(SID, [use("tu_1"), result("tu_1")], []).empty


# 9
def test_only_the_dangling_use_is_answered() -> None:
    log = [use("tu_1"), result("tu_1"), use("tu_2"), {"type": "agent.message", "content": []}]
    plan = recover_interrupted_state(SID, log, [])
    assert [e.get("tool_use_id") for e in plan.events if e["type"] == "agent.tool_result"] == ["tu_2"]


# 10 (a choice: results pair with uses by namespace, so an MCP result never answers a builtin use)
def test_results_pair_by_namespace() -> None:
    log = [use("same"), {"type": "agent.mcp_tool_result", "mcp_tool_use_id": "same", "content": "x"}]
    plan = recover_interrupted_state(SID, log, [])
    assert [e["tool_use_id"] for e in plan.events if e["type"] == "agent.tool_result"] == ["same"]


# 11
def test_second_pass_is_a_no_op() -> None:
    log: list[dict[str, Any]] = [use("tu_1"), mcp_use("mcp_1"), custom_use("ctu_1")]
    streams = [OpenStream("stm_1", "partial", 1)]
    first = recover_interrupted_state(SID, log, streams, status="running")
    assert not first.empty
    streams = apply(log, streams, first)
    second = recover_interrupted_state(SID, log, streams, status="idle")
    assert second.empty


# 12
def test_interleaved_uses_and_results_need_nothing() -> None:
    assert recover_interrupted_state(SID, [use("a"), use("b"), result("a"), result("b")], []).empty


# 13
def test_kitchen_sink() -> None:
    log = [use("tu_ok"), result("tu_ok"), use("tu_1"), mcp_use("mcp_1"), custom_use("ctu_1")]
    plan = recover_interrupted_state(SID, log, [OpenStream("stm_1", "half", 5)])
    assert kinds(plan) == ["agent.message", "agent.tool_result", "agent.mcp_tool_result", "session.warning"]
    assert (plan.finalized_streams, plan.injected_tool_results, plan.injected_mcp_tool_results) == (1, 1, 1)
    assert plan.waiting_on_user == ("ctu_1",)


# 14
def test_warning_details_name_the_tools() -> None:
    plan = recover_interrupted_state(SID, [use("tu_1", name="bash"), custom_use("ctu_1")], [])
    details = plan.events[-1]["details"]
    assert details["tool_results"] == [{"tool_use_id": "tu_1", "tool_name": "bash"}]
    assert details["waiting_on_user"] == ["ctu_1"]


# Beyond the original: the reaper bug (fabricating answers to requires_action turns) must not exist.
def test_tool_use_waiting_for_confirmation_is_not_an_orphan() -> None:
    log = [use("tu_ask", evaluated_permission="ask")]
    plan = recover_interrupted_state(SID, log, [], status="running")
    assert [e["type"] for e in plan.events] == ["session.warning", "session.status_idle"]
    assert plan.events[-1]["stop_reason"] == {"type": "requires_action", "event_ids": ["tu_ask"]}
    assert plan.injected_tool_results == 0


def test_confirmed_but_unfinished_tool_use_is_an_orphan() -> None:
    log = [
        use("tu_ask", evaluated_permission="ask"),
        {"type": "user.tool_confirmation", "tool_use_id": "tu_ask", "result": "allow"},
    ]
    plan = recover_interrupted_state(SID, log, [])
    assert [e["type"] for e in plan.events] == ["agent.tool_result", "session.warning"]


def test_answered_custom_tool_use_is_not_waiting() -> None:
    log = [custom_use("ctu_1"), {"type": "user.custom_tool_result", "custom_tool_use_id": "ctu_1", "content": []}]
    assert recover_interrupted_state(SID, log, []).waiting_on_user == ()


def test_a_running_session_returns_to_idle_with_end_turn() -> None:
    plan = recover_interrupted_state(SID, [], [], status="running")
    assert plan.new_status == "idle"
    assert plan.events[-1] == {**plan.events[-1], "type": "session.status_idle", "stop_reason": {"type": "end_turn"}}
    assert recover_interrupted_state(SID, [], [], status="idle").empty
    assert recover_interrupted_state(SID, [], [], status="terminated").empty


def test_planned_ids_are_deterministic_so_a_retried_plan_dedupes() -> None:
    log = [use("tu_1")]
    a = recover_interrupted_state(SID, log, [OpenStream("stm_1", "x", 1)], status="running")
    b = recover_interrupted_state(SID, log, [OpenStream("stm_1", "x", 1)], status="running")
    assert [e["id"] for e in a.events] == [e["id"] for e in b.events]
    assert len({e["id"] for e in a.events}) == len(a.events)
    other = recover_interrupted_state("ses_01h00000000000000000000010", log, [], status="running")
    assert not {e["id"] for e in other.events} & {e["id"] for e in a.events}


def test_a_24_hour_old_orphan_is_still_recovered() -> None:
    plan = recover_interrupted_state(SID, [use("tu_old")], [OpenStream("stm_old", "x", 0)])
    assert plan.injected_tool_results == 1 and plan.finalized_streams == 1
