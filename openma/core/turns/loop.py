"""The turn loop, run by a session's actor: ``t.sessions.run(session_id, model=...)`` → :class:`TurnResult`.

1. Promote the inbox and read the log. What to do is decided from the log alone (so any process can continue
   a turn another one left): a ``user.interrupt`` as the latest input closes what waits and stops
   ``interrupted``; a tool call still waiting on the user (a custom tool's result, an ``always_ask`` tool's
   confirmation) stops ``requires_action``; a confirmed call runs (``allow``) or is answered with an error
   (``deny``); nothing new from the user since the agent's last answer stops ``end_turn`` without a call.
   An answer a dead runner left unfinished (the ``agent.message`` recovery logs as ``interrupted`` from its
   open stream, with no ``user.interrupt`` after it) is no answer: the input before it is still owed one,
   so the model is called, without that fragment in what it is shown (see :func:`.pending.cut_short`).
2. Set ``running``; then, up to ``max_steps`` model calls: compact the history if it is over budget, call
   the model (retrying retryable errors, see :mod:`.retry`), run the built-in tools it asked for
   concurrently in the session's sandbox and log each ``agent.tool_result`` (the step's last one is written
   with the next step's answer, in one unit, see :mod:`.deferred`); stop ``requires_action`` when a
   call waits on the user, ``end_turn`` when the model asked for no tool.
3. A ``user.interrupt`` posted meanwhile cancels the model call and the running tools; what was streamed is
   logged as an interrupted ``agent.message``, every unanswered tool call gets an error result, the
   interrupt is promoted, and the session goes ``idle``. A model error that is not retryable, or retries
   that ran out, log ``session.error`` (with ``retry_status``) and stop ``error``.
4. The session goes ``idle`` with ``stop_reason {"type": <the stop reason>, "event_ids"?}``.

A lost lease (``LeaseLost``), the store failing under a write of the turn (``StorageUnavailable``, say while
the database restarts) or an unexpected error propagates as itself, never as a model error and without a
``session.error``: the actor exits uncleanly and the next holder recovers the turn
(:mod:`openma.core.recovery`) and runs it again.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import anyio
import attrs

from openma.core.actor import SessionActor
from openma.core.ids import new_id
from openma.core.turns import conversation
from openma.core.turns.builtins import ToolOutcome, run_builtin
from openma.core.turns.deferred import HOLD_SECONDS, Deferred
from openma.core.turns.pending import cut_short, waiting_calls
from openma.core.turns.retry import RetryPolicy, call_with_retries
from openma.core.turns.step import ModelStep, StepOutput, add_usage, text_of
from openma.core.turns.toolset import ToolSpec, agent_tools
from openma.errors import Conflict, LeaseLost, ModelError, OpenmaError
from openma.models import Event, Value
from openma.ports.model import Model, ModelRequest, Usage
from openma.ports.telemetry import Telemetry

StopReason = Literal["end_turn", "requires_action", "interrupted", "error", "max_steps"]
DEFAULT_MAX_STEPS: Final = 50
INTERRUPTED_TOOL_TEXT: Final = "(interrupted by the user before this tool finished)"
_LOG_TYPES: Final = (
    "user.message",
    "user.interrupt",
    "user.tool_confirmation",
    "user.custom_tool_result",
    "agent.message",
    "agent.thinking",
    "agent.tool_use",
    "agent.custom_tool_use",
    "agent.tool_result",
    "agent.thread_context_compacted",
    "span.model_request_start",
)
_INPUTS: Final = ("user.message", "user.interrupt", "user.tool_confirmation", "user.custom_tool_result")


@attrs.frozen
class TurnResult(Value):
    """How a turn ended: ``stop_reason``, the events it logged (oldest first; recovery the acquisition ran
    comes before them) and the tokens it used (summed over its model calls). ``to_dict()`` / ``to_json``."""

    stop_reason: StopReason
    events: list[Event]
    usage: Usage


@attrs.frozen
class TurnOptions:
    """The loop's limits."""

    max_steps: int = DEFAULT_MAX_STEPS
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    budget_tokens: int = conversation.DEFAULT_BUDGET_TOKENS
    stall_timeout: float = 120.0
    max_tokens: int = 4096
    #: Seconds a step's last tool result may wait to be written with the next step's answer (see
    #: :mod:`.deferred`); 0 writes it on its own at once, while the next call is prepared.
    hold_results: float = HOLD_SECONDS


class Turn:
    """One run of the loop for a held actor (see the module docstring)."""

    def __init__(self, actor: SessionActor, model: Model, telemetry: Telemetry, options: TurnOptions) -> None:
        self.actor = actor
        self.model = model
        self.telemetry = telemetry
        self.options = options
        self.log: list[Event] = []
        self.conversation = conversation.Conversation()
        self.usage = Usage()
        self.interrupted = False
        self._scope: anyio.CancelScope | None = None
        self._open_uses: dict[str, dict[str, Any]] = {}
        self._step: ModelStep | None = None
        self._running = False
        self._remaining = 0
        self._next_span: dict[str, Any] | None = None
        self._later = Deferred(actor, hold=options.hold_results)
        #: Logged events the model is not shown (an unfinished answer of a dead runner; see :func:`cut_short`).
        self._unseen: frozenset[str] = frozenset()

    async def append(self, events: Sequence[dict[str, Any]]) -> list[Event]:
        """Append ``events`` after the held ones (written in the same unit; see :mod:`.deferred`), keeping
        :attr:`log` and the conversation up to date; returns ``events`` as stored."""
        held = self._later.take()
        if not held:
            await self.barrier()
        stored: list[Event] = await self.actor.append([*held, *events])
        for i, event in enumerate(stored):
            if event.type in _LOG_TYPES:
                self.log.append(event)
                if i < len(held):  # in the conversation since they were handed over
                    continue
                if event.type == "agent.thread_context_compacted":
                    self.conversation.rebuild([e for e in self.log if e.id not in self._unseen])
                else:
                    self.conversation.add(event.data)
        return stored[len(held) :]

    def append_later(self, events: list[dict[str, Any]]) -> None:
        """Hand ``events`` over to be written with the turn's next write (see :mod:`.deferred`): the
        conversation has them at once, :attr:`log` once they are written."""
        for data in events:
            if data["type"] in _LOG_TYPES:
                self.conversation.add(data)
        self._later.hold(events)

    async def barrier(self) -> None:
        """Write the held events now (or wait for their write; its error is raised here)."""
        held = self._later.take()
        stored = await self.actor.append(held) if held else await self._later.wait()
        self.log.extend(e for e in stored if e.type in _LOG_TYPES)

    async def _read_log(self, first_seq: int) -> list[Event]:
        out: list[Event] = []
        after = max(0, first_seq - 1)
        while True:
            page = await self.actor.events(after=after, limit=500, types=_LOG_TYPES)
            out.extend(page.items)
            if len(page.items) < 500:
                return out
            after = page.items[-1].seq

    async def run(self) -> TurnResult:
        before = await self.actor.session()
        if before.status == "terminated":
            raise Conflict(f"session {before.id} is terminated; it runs no more turns", session_id=before.id)
        await self.actor.promote()
        session = await self.actor.session()
        self.log = await self._read_log(session.first_seq)
        self.conversation = conversation.Conversation(self.log)
        agent = session.agent
        self.tools = agent_tools(agent.get("tools"))
        model = agent.get("model")
        self.model_name = str(model.get("id", "")) if isinstance(model, Mapping) else str(model or "")
        self.system = str(agent.get("system") or "")
        reason = await self._guarded(session.status)
        events: list[Event] = []
        after = before.last_seq
        while True:
            page = await self.actor.events(after=after, limit=500)
            events.extend(page.items)
            if len(page.items) < 500:
                return TurnResult(reason, events, self.usage)
            after = page.items[-1].seq

    async def _guarded(self, status: str) -> StopReason:
        failure: Exception | None = None
        reason: StopReason = "end_turn"
        ids: list[str] | None = None
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                self._scope = scope
                self._later.task_group = tg
                tg.start_soon(self._watch_interrupts)
                try:
                    reason, ids = await self._decide_and_loop(status)
                except Exception as exc:  # raised below, outside the task group, as itself (not in a group)
                    failure = exc
                finally:
                    tg.cancel_scope.cancel()  # a write in flight is shielded: it finishes first
        self._later.task_group = None
        if failure is not None:
            if self._later.pending and not isinstance(failure, LeaseLost):
                try:  # what a tool returned is still worth logging; the failure is what the caller gets
                    await self.barrier()
                except Exception as exc:
                    self.telemetry.emit(
                        "silent_catch",
                        where="turns.held_results",
                        error=type(exc).__name__,
                        code=getattr(exc, "code", None),
                    )
            raise failure
        await self.barrier()
        if scope.cancelled_caught or self.interrupted:
            return await self._close_interrupted()
        if reason in ("interrupted", "end_turn", "requires_action") and ids is None:
            return reason  # nothing ran: the session stays as it is
        await self.actor.set_status("idle", stop_reason=self._stop(reason, ids or []))
        return reason

    @staticmethod
    def _stop(reason: StopReason, ids: list[str]) -> dict[str, Any]:
        stop: dict[str, Any] = {"type": reason}
        if reason == "requires_action":
            stop["event_ids"] = ids
        return stop

    async def _watch_interrupts(self) -> None:
        store, session_id = self.actor.store, self.actor.session_id
        while True:
            woken = store.arm(session_id, "inbox")
            try:
                with anyio.CancelScope(shield=True):  # a short read; cut mid-query, a driver drops its connection
                    page = await store.pending(session_id, limit=100)
            except OpenmaError as exc:  # the turn's own writes fail too if the store is gone; keep watching
                self.telemetry.emit(
                    "silent_catch", where="turns.watch_interrupts", error=type(exc).__name__, code=exc.code
                )
                with anyio.move_on_after(store.poll_timeout()):
                    await woken.wait()
                continue
            if any(item.type == "user.interrupt" for item in page.items):
                self.interrupted = True
                if self._scope is not None:
                    self._scope.cancel()
                return
            with anyio.move_on_after(store.poll_timeout()):
                await woken.wait()

    async def _decide_and_loop(self, status: str) -> tuple[StopReason, list[str] | None]:
        """``(reason, ids)``; ``ids is None`` when nothing ran (no status change is due)."""
        waiting, confirmed, confirmations = waiting_calls(self.log)
        inputs = [e for e in self.log if e.type in _INPUTS]
        interrupts = [e.seq for e in inputs if e.type == "user.interrupt"]
        if interrupts:  # an interrupt closes every call that was waiting on the user before it
            seq_of = {e.id: e.seq for e in self.log}
            stale = [u for u in waiting + confirmed if seq_of.get(u["id"], 0) < interrupts[-1]]
            if stale:
                await self.append([self._result(u["id"], INTERRUPTED_TOOL_TEXT, True) for u in stale])
                waiting, confirmed, confirmations = waiting_calls(self.log)
        if inputs and inputs[-1].type == "user.interrupt":
            return "interrupted", None
        if waiting and not confirmed:
            return "requires_action", None
        messages = self.conversation.messages
        if not confirmed and (not messages or messages[-1]["role"] != "user"):
            self._unseen = cut_short(self.log)
            if self._unseen:
                self.conversation.rebuild([e for e in self.log if e.id not in self._unseen])
                messages = self.conversation.messages
            if not messages or messages[-1]["role"] != "user":
                return "end_turn", None
        if status != "running":
            await self.actor.set_status("running")
        self._running = True
        if confirmed:
            await self._run_tools(confirmed, confirmations)
        if waiting:
            return "requires_action", [u["id"] for u in waiting]
        return await self._steps()

    async def _steps(self) -> tuple[StopReason, list[str] | None]:
        custom = frozenset(n for n, s in self.tools.items() if s.kind == "custom")
        ask = frozenset(n for n, s in self.tools.items() if s.permission == "always_ask")
        step = self._step = ModelStep(
            self.actor,
            self.model,
            self.append,
            self.telemetry,
            custom_tools=custom,
            ask_tools=ask,
            stall_timeout=self.options.stall_timeout,
            barrier=self.barrier,
        )
        tools = [spec.neutral() for spec in self.tools.values()]
        for n in range(self.options.max_steps):
            await self._compact()
            request = ModelRequest(
                model=self.model_name,
                messages=self.conversation.snapshot(),
                system=self.system,
                tools=tools,
                max_tokens=self.options.max_tokens,
            )
            try:
                output: StepOutput = await call_with_retries(
                    self.options.retry, functools.partial(step.attempt, request)
                )
            except ModelError as exc:
                self.usage = add_usage(self.usage, step.state.usage)
                retry_status = "retries_exhausted" if exc.retryable else "non_retryable"
                error = {"type": exc.code, "message": str(exc)[:500], "retry_status": retry_status}
                await self.append([{"type": "session.error", "error": error, "message": str(exc)[:500]}])
                return "error", []
            self.usage = add_usage(self.usage, output.usage)
            if not output.tool_uses:
                return "end_turn", []
            runnable = [
                u for u in output.tool_uses if u["type"] == "agent.tool_use" and u["evaluated_permission"] == "allow"
            ]
            waiting = [u["id"] for u in output.tool_uses if u not in runnable]
            if not waiting and n + 1 < self.options.max_steps:  # another step follows: log its span start
                step.prelogged_span = new_id("evt")  # with the last tool result, in the same write
                self._next_span = step.span_start(step.prelogged_span, self.model_name)
            await self._run_tools(runnable, {})
            self._next_span = None
            if waiting:
                return "requires_action", waiting
        return "max_steps", []

    async def _compact(self) -> None:
        if self.conversation.tokens(self.system) <= self.options.budget_tokens:
            return
        await self.barrier()
        plan = conversation.plan_compaction(self.log, system=self.system, budget_tokens=self.options.budget_tokens)
        if plan is not None:
            await self.append([plan])

    def _result(self, use_id: str, content: str, is_error: bool, truncated: bool = False) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "agent.tool_result",
            "tool_use_id": use_id,
            "content": content,
            "is_error": is_error,
        }
        if truncated:
            event["truncated"] = True
        return event

    async def _run_tools(self, uses: list[dict[str, Any]], confirmations: Mapping[str, Mapping[str, Any]]) -> None:
        """Run ``uses`` concurrently, logging each result as it comes (denied ones are answered at once)."""
        runnable: list[dict[str, Any]] = []
        for use in uses:
            answer = confirmations.get(use["id"])
            if answer is not None and answer.get("result") != "allow":
                why = answer.get("deny_message") or "the user denied this tool call"
                await self.append([self._result(use["id"], f"denied: {why}", True)])
                self.telemetry.emit(
                    "tool.call",
                    tenant_id=self.actor.tenant_id,
                    session_id=self.actor.session_id,
                    tool=use["name"],
                    outcome="denied",
                    duration_ms=0.0,
                )
            else:
                runnable.append(use)
        if not runnable:
            return
        self._open_uses = {u["id"]: u for u in runnable}
        self._remaining = len(runnable)
        sandbox = await self.actor.sandbox() if any(u["name"] in self.tools for u in runnable) else None
        if len(runnable) == 1:  # no task group for one call: its error and cancellation are its own
            await self._run_tool(sandbox, runnable[0])
            return
        failures: list[Exception] = []

        async def guarded(use: dict[str, Any]) -> None:
            try:
                await self._run_tool(sandbox, use)
            except Exception as exc:  # a lost lease, say: stop the others, raise it as itself below
                failures.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for use in runnable:
                tg.start_soon(guarded, use)
        if failures:
            raise failures[0]

    async def _run_tool(self, sandbox: Any, use: dict[str, Any]) -> None:
        spec: ToolSpec | None = self.tools.get(use["name"])
        started = time.perf_counter()
        outcome_name = "error"
        duration: float | None = None
        try:
            if spec is None or spec.kind != "builtin":
                outcome = ToolOutcome(f"unknown tool {use['name']!r}; it is not enabled for this agent", is_error=True)
            else:
                outcome = await run_builtin(sandbox, use["name"], use.get("input") or {})
            duration = time.perf_counter() - started
            outcome_name = "error" if outcome.is_error else "ok"
            self._remaining -= 1
            result = [self._result(use["id"], outcome.content, outcome.is_error, outcome.truncated)]
            if self._remaining == 0 and self._next_span is not None:
                # The step's last result, with the next step's span start: written with the next step's
                # answer, in one unit, or on its own shortly (see Deferred).
                result.append(self._next_span)
                self._next_span = None
                self.append_later(result)
            else:
                await self.append(result)
            self._open_uses.pop(use["id"], None)
        except anyio.get_cancelled_exc_class():
            outcome_name = "interrupted"
            raise
        finally:
            self.telemetry.emit(
                "tool.call",
                tenant_id=self.actor.tenant_id,
                session_id=self.actor.session_id,
                tool=use["name"],
                outcome=outcome_name,
                duration_ms=round((duration if duration is not None else time.perf_counter() - started) * 1000, 3),
            )

    async def _close_interrupted(self) -> StopReason:
        """Log what the interrupt cut short, promote the interrupt and go idle (see the module docstring)."""
        await self.barrier()
        step = self._step
        if step is not None and step.state.span_id and not step.state.closed:
            state = step.state
            await step.flush(state)
            if state.stream_id is not None:
                await self.actor.finalize_stream(state.stream_id, "interrupted")
            text = "".join(state.text)
            closing: list[dict[str, Any]] = []
            if text:
                closing.append(
                    {
                        "type": "agent.message",
                        "message_id": state.message_id,
                        "content": [{"type": "text", "text": text}],
                        "interrupted": True,
                    }
                )
            closing.append(
                {
                    "type": "span.model_request_end",
                    "model": self.model_name,
                    "model_request_start_id": state.span_id,
                    "finish_reason": "interrupted",
                    "final_text_length": len(text),
                    "is_error": True,
                    "error_message": "interrupted by the user",
                }
            )
            await self.append(closing)
            self.usage = add_usage(self.usage, state.usage)
        if step is not None and step.prelogged_span is not None:  # its span started; its call never did
            ended = {"model": self.model_name, "model_request_start_id": step.prelogged_span}
            await self.append(
                [{"type": "span.model_request_end", **ended, "is_error": True, "finish_reason": "interrupted"}]
            )
        answered = {e.data.get("tool_use_id") for e in self.log if e.type == "agent.tool_result"}
        orphans = [u for u in self._open_uses if u not in answered]
        if orphans:
            await self.append([self._result(u, INTERRUPTED_TOOL_TEXT, True) for u in orphans])
        await self.actor.promote()
        if self._running:
            await self.actor.set_status("idle", stop_reason={"type": "interrupted"})
        return "interrupted"


async def run_turn(
    actor: SessionActor, model: Model, *, telemetry: Telemetry, options: TurnOptions | None = None
) -> TurnResult:
    """Run one turn of ``actor``'s session with ``model`` (see the module docstring); reported as a ``turn``
    telemetry event (``stop_reason``, or ``outcome="failed"`` when it raised, and ``duration_ms``)."""
    started, fields = time.perf_counter(), {"tenant_id": actor.tenant_id, "session_id": actor.session_id}
    try:
        result = await Turn(actor, model, telemetry, options or TurnOptions()).run()
    except BaseException:
        telemetry.emit("turn", **fields, outcome="failed", duration_ms=round((time.perf_counter() - started) * 1e3, 3))
        raise
    done = {"stop_reason": result.stop_reason, "duration_ms": round((time.perf_counter() - started) * 1e3, 3)}
    telemetry.emit("turn", **fields, outcome="ok" if result.stop_reason != "error" else "error", **done)
    return result


__all__ = ["DEFAULT_MAX_STEPS", "StopReason", "TurnOptions", "TurnResult", "run_turn", "text_of"]
