"""One model step of a turn: log the request span, stream the answer into the streams table, log the answer.

A step opens a stream row, reads the model's events (with a stall watchdog: no event for ``stall_timeout``
seconds is a retryable :class:`~openma.errors.ModelError`, since the original only claimed one), appends
text deltas to the stream in batches, finalizes it ``completed`` and appends, in one write, the
``agent.thinking``, ``agent.message``, the tool calls and ``span.model_request_end``. A failed attempt
finalizes its stream ``aborted`` and logs its ``span.model_request_end`` with ``is_error``; an interrupted
one (cancelled) leaves its partial state in :attr:`StepState` for the loop to close.

Only what the model adapter raises is a model error: an :class:`~openma.errors.OpenmaError` raised by the
model's stream that is not a ``ModelError`` becomes a non-retryable one. A failure of the step's own writes
(the stream's rows, the events the loop holds: ``StorageUnavailable`` while the database restarts,
``LeaseLost``) is raised as itself, after a best-effort, shielded cleanup that never replaces it: the turn
stops on it without logging a model error, and whoever runs the session next (a worker, after a backoff)
recovers what is left open and calls the model again.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import anyio
import attrs

from openma.core.actor import SessionActor
from openma.core.ids import new_id
from openma.errors import LeaseLost, ModelError, OpenmaError
from openma.models import Event
from openma.ports.model import (
    Finish,
    Model,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ThinkingDelta,
    ToolUse,
    Usage,
)
from openma.ports.telemetry import Telemetry

#: Text deltas are written to the stream row in batches of this many, or this often, whichever comes first.
CHUNK_BATCH: Final = 32
CHUNK_INTERVAL: Final = 0.05
#: Seconds without any event from the model before the call counts as stalled (retryable).
DEFAULT_STALL_TIMEOUT: Final = 120.0
ERROR_MESSAGE_CHARS: Final = 500
#: The longest the cleanup after a failed write of the step may take (the store may still be down).
CLEANUP_SECONDS: Final = 5.0


@attrs.define
class StepState:
    """What one model call produced so far (kept when it is cancelled, so an interrupt can log it)."""

    span_id: str = ""
    stream_id: str | None = None
    message_id: str = ""
    text: list[str] = attrs.field(factory=list)
    unflushed: list[str] = attrs.field(factory=list)
    thinking: list[str] = attrs.field(factory=list)
    signature: str | None = None
    tool_uses: list[ToolUse] = attrs.field(factory=list)
    usage: Usage = attrs.field(factory=Usage)
    finish: Finish | None = None
    started: float = 0.0
    #: True once the attempt's span and stream are closed (finished or failed).
    closed: bool = False


@attrs.frozen
class StepOutput:
    """A finished model call: its logged events and what the loop acts on."""

    events: list[Event]
    tool_uses: list[dict[str, Any]]  # the logged agent.tool_use / agent.custom_tool_use payloads
    usage: Usage
    finish: Finish


Append = Callable[[Sequence[dict[str, Any]]], Awaitable[list[Event]]]


async def _no_barrier() -> None:
    return None


def merge_usage(old: Usage, new: Usage) -> Usage:
    """``new``'s known fields over ``old``'s (the port's rule: the last count wins per field)."""
    return Usage(
        **{f: getattr(new, f) if getattr(new, f) is not None else getattr(old, f) for f in attrs.fields_dict(Usage)}
    )


def add_usage(total: Usage, step: Usage) -> Usage:
    """The sum of two usages (fields unknown in both stay ``None``)."""
    out = {}
    for f in attrs.fields_dict(Usage):
        a, b = getattr(total, f), getattr(step, f)
        out[f] = None if a is None and b is None else (a or 0) + (b or 0)
    return Usage(**out)


def usage_dict(usage: Usage) -> dict[str, int]:
    """``model_usage`` as logged: ``{input, output, cache_read, cache_creation}`` (unknown counts are 0)."""
    return {
        "input_tokens": usage.input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
        "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
    }


class ModelStep:
    """Runs one model call for a turn (see the module docstring)."""

    def __init__(
        self,
        actor: SessionActor,
        model: Model,
        append: Append,
        telemetry: Telemetry,
        *,
        custom_tools: frozenset[str],
        ask_tools: frozenset[str],
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        barrier: Callable[[], Awaitable[None]] = _no_barrier,
    ) -> None:
        self._actor = actor
        #: Awaited before a write of the step that does not go through ``append`` (the stream's): the events
        #: the loop holds are written first (``append`` writes them in its own unit).
        self._barrier = barrier
        self._model = model
        self._append = append
        self._telemetry = telemetry
        self._custom = custom_tools
        self._ask = ask_tools
        self._stall = stall_timeout
        #: The call in progress (or the last one).
        self.state = StepState()
        #: The id of a ``span.model_request_start`` the loop already logged for the next attempt (it rides on
        #: the write of the previous step's last tool result, saving a write per step).
        self.prelogged_span: str | None = None

    @staticmethod
    def span_start(span_id: str, model: str) -> dict[str, Any]:
        return {"id": span_id, "type": "span.model_request_start", "model": model}

    async def attempt(self, request: ModelRequest, attempt: int) -> StepOutput:
        """One attempt at the call; a ``ModelError`` is logged (span and stream) and raised."""
        span_id, self.prelogged_span = self.prelogged_span, None
        state = self.state = StepState(span_id=span_id or new_id("evt"), message_id=new_id("msg"))
        if span_id is None:
            await self._append([self.span_start(state.span_id, request.model)])
        state.started = time.perf_counter()
        try:
            await self._consume(request, state)
        except ModelError as exc:
            await self._failed(request, state, exc, attempt)
            raise
        except OpenmaError as exc:  # a write of ours failed, not the model: raised as itself
            await self._abandoned(request, state, exc, attempt)
            raise
        return await self._finished(request, state, attempt)

    async def _consume(self, request: ModelRequest, state: StepState) -> None:
        events = _ModelStream(self._model, request)
        last_flush = time.monotonic()
        stall = self._stall
        try:
            # One watchdog for the whole call: its deadline moves on with every event (no event for ``stall``
            # seconds cancels it), and it is lifted while a write of ours is under way.
            with anyio.CancelScope(deadline=anyio.current_time() + stall) as watchdog:
                async for event in events:
                    if isinstance(event, TextDelta):
                        state.text.append(event.text)
                        state.unflushed.append(event.text)
                        now = time.monotonic()
                        due = len(state.unflushed) >= CHUNK_BATCH or now - last_flush >= CHUNK_INTERVAL
                        if state.stream_id is None or due:
                            watchdog.deadline = math.inf
                            await self.flush(state)
                            last_flush = now
                    elif isinstance(event, ThinkingDelta):
                        state.thinking.append(event.thinking)
                        state.signature = event.signature or state.signature
                    elif isinstance(event, ToolUse):
                        state.tool_uses.append(event)
                    elif isinstance(event, Usage):
                        state.usage = merge_usage(state.usage, event)
                    elif isinstance(event, Finish):
                        state.finish = event
                    watchdog.deadline = anyio.current_time() + stall
            if watchdog.cancelled_caught:
                raise ModelError(f"the model sent nothing for {stall:g}s (stalled stream)", retryable=True)
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()
        if state.finish is None:
            raise ModelError("the model's stream ended without a finish event", retryable=True)

    async def flush(self, state: StepState) -> None:
        """Write the buffered text deltas to the stream row (opened with the first text: a step that streams
        no text, only tool calls, has no stream row)."""
        if state.unflushed:
            await self._barrier()
            if state.stream_id is None:
                state.stream_id = (await self._actor.open_stream(message_id=state.message_id)).id
            chunks, state.unflushed = state.unflushed, []
            await self._actor.append_stream(state.stream_id, chunks)

    def _span_end(self, request: ModelRequest, state: StepState, **fields: Any) -> dict[str, Any]:
        return {
            "type": "span.model_request_end",
            "model": request.model,
            "model_request_start_id": state.span_id,
            "model_usage": usage_dict(state.usage),
            "final_text_length": len("".join(state.text)),
            **fields,
        }

    def _model_call(self, request: ModelRequest, state: StepState, outcome: str, attempt: int, **extra: Any) -> None:
        self._telemetry.emit(
            "model.call",
            tenant_id=getattr(self._actor, "tenant_id", None),
            session_id=self._actor.session_id,
            model=request.model,
            adapter=getattr(self._model, "name", None),
            input_tokens=state.usage.input_tokens or 0,
            output_tokens=state.usage.output_tokens or 0,
            latency_ms=round((time.perf_counter() - state.started) * 1000, 3),
            outcome=outcome,
            attempt=attempt,
            **extra,
        )

    async def _failed(self, request: ModelRequest, state: StepState, error: ModelError, attempt: int) -> None:
        state.closed = True
        with anyio.CancelScope(shield=True):
            if state.stream_id is not None:
                await self.flush(state)
                await self._actor.finalize_stream(state.stream_id, "aborted", error=str(error)[:ERROR_MESSAGE_CHARS])
            span = self._span_end(
                request,
                state,
                finish_reason=None,
                is_error=True,
                error_message=str(error)[:ERROR_MESSAGE_CHARS],
                retryable=error.retryable,
            )
            await self._append([span])
        self._model_call(request, state, "failed", attempt, retryable=error.retryable)

    async def _abandoned(self, request: ModelRequest, state: StepState, error: OpenmaError, attempt: int) -> None:
        """Close what a failed write of ours left open, if the store lets us: the stream ``aborted``, the span
        ended with ``is_error`` and ``retryable``. Shielded and bounded; its own failure is reported
        (``silent_catch``) and left to recovery, never raised over ``error``. A lost lease writes nothing."""
        self._model_call(request, state, "aborted", attempt, error=error.code)
        if isinstance(error, LeaseLost):
            return
        message = f"{error.code}: {error}"[:ERROR_MESSAGE_CHARS]
        try:
            with anyio.move_on_after(CLEANUP_SECONDS, shield=True):
                if state.stream_id is not None:
                    await self._actor.finalize_stream(state.stream_id, "aborted", error=message)
                span = self._span_end(
                    request, state, finish_reason=None, is_error=True, error_message=message, retryable=True
                )
                await self._append([span])
                state.closed = True
        except Exception as exc:
            self._telemetry.emit(
                "silent_catch",
                where="turns.step_cleanup",
                error=type(exc).__name__,
                code=getattr(exc, "code", None),
                session_id=self._actor.session_id,
            )

    async def _finished(self, request: ModelRequest, state: StepState, attempt: int) -> StepOutput:
        assert state.finish is not None
        await self.flush(state)
        if state.stream_id is not None:
            await self._actor.finalize_stream(state.stream_id, "completed")
        out: list[dict[str, Any]] = []
        if state.thinking:
            thinking: dict[str, Any] = {"type": "agent.thinking", "text": "".join(state.thinking)}
            if state.signature:
                thinking["signature"] = state.signature
            out.append(thinking)
        text = "".join(state.text)
        if text:
            out.append(
                {"type": "agent.message", "message_id": state.message_id, "content": [{"type": "text", "text": text}]}
            )
        uses = [self.tool_use_event(use) for use in state.tool_uses]
        out.extend(uses)
        out.append(
            self._span_end(
                request,
                state,
                finish_reason=state.finish.reason,
                raw_finish_reason=state.finish.raw_reason,
                is_error=False,
            )
        )
        state.closed = True
        events = await self._append(out)
        self._model_call(request, state, "ok", attempt, finish_reason=state.finish.reason)
        return StepOutput(events, uses, state.usage, state.finish)

    def tool_use_event(self, use: ToolUse) -> dict[str, Any]:
        """The logged form of a tool call: the log's event id is the tool use's id from here on (model-given
        ids are not unique across sessions and scripts), the model's own id kept as ``provider_id``."""
        base: dict[str, Any] = {"id": new_id("evt"), "name": use.name, "input": dict(use.input), "provider_id": use.id}
        if use.name in self._custom:
            return {"type": "agent.custom_tool_use", **base}
        permission = "ask" if use.name in self._ask else "allow"
        return {"type": "agent.tool_use", **base, "evaluated_permission": permission}


class _ModelStream:
    """The model's event stream, where every error is the model's: an ``OpenmaError`` other than a
    ``ModelError`` that the adapter raises (on the call or any step of its stream) becomes a non-retryable
    ``ModelError``; anything else is raised as itself. The step's own writes happen outside it."""

    def __init__(self, model: Model, request: ModelRequest) -> None:
        try:
            self._events: AsyncIterator[ModelEvent] = model.stream(request)
        except ModelError:
            raise
        except OpenmaError as exc:
            raise _as_model_error(exc) from exc

    def __aiter__(self) -> _ModelStream:
        return self

    async def __anext__(self) -> ModelEvent:
        try:
            return await self._events.__anext__()
        except ModelError:
            raise
        except OpenmaError as exc:
            raise _as_model_error(exc) from exc

    async def aclose(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()


def _as_model_error(exc: OpenmaError) -> ModelError:
    return ModelError(str(exc), retryable=False, cause=exc.code)


def text_of(content: Any) -> str:
    """The text of a content value (a string, or blocks whose text parts are joined)."""
    if isinstance(content, str):
        return content
    return "".join(str(b.get("text", "")) for b in content or () if isinstance(b, Mapping))
