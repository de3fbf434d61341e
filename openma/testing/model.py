"""``ScriptedModel``: an in-library fake :class:`~openma.ports.model.Model`, like ``httpx.MockTransport``.

Each call to :meth:`ScriptedModel.stream` consumes the next scripted response:

* a list of content blocks, ``{"type": "text", "text"}``, ``{"type": "thinking", "thinking", "signature"?}``
  and ``{"type": "tool_use", "id", "name", "input"}``, streamed in that order (text and thinking in a few
  deltas, so streaming paths are exercised), then a :class:`~openma.ports.model.Usage` and a
  :class:`~openma.ports.model.Finish` (``tool_use`` when a block calls a tool, else ``end_turn``);
* an exception instance (say ``ModelError("overloaded", retryable=True)``), raised when the call starts;
* a callable taking the :class:`~openma.ports.model.ModelRequest` and returning either of the above, for
  answers that depend on what the model was shown.

``.requests`` records every request received (system, messages, tools), so a test sees what the model saw.
``delay`` (seconds, per call or per response through :class:`Scripted`) sleeps between deltas, to give an
interrupt something to cancel. Running out of responses is a non-retryable :class:`ModelError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import attrs

from openma.errors import InvalidInput, ModelError
from openma.ports.model import Finish, ModelEvent, ModelRequest, TextDelta, ThinkingDelta, ToolUse, Usage

Blocks = Sequence[Mapping[str, Any]]


@attrs.frozen
class Scripted:
    """One response with its own options: ``delay`` seconds between deltas, and the ``usage`` to report."""

    blocks: Blocks | BaseException
    delay: float = 0.0
    usage: Usage | None = None


Response = Blocks | BaseException | Scripted | Callable[[ModelRequest], "Blocks | BaseException"]


def _pieces(text: str, parts: int = 3) -> list[str]:
    if len(text) <= parts:
        return [text] if text else []
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


class ScriptedModel:
    """A model that answers from a script (see the module docstring)."""

    name = "scripted"

    def __init__(self, responses: Iterable[Response] = (), *, model: str = "scripted", delay: float = 0.0) -> None:
        self._responses: list[Response] = list(responses)
        self.model = model
        self.delay = delay
        #: Every request received, in order.
        self.requests: list[ModelRequest] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"ScriptedModel(remaining={len(self._responses)}, calls={len(self.requests)})"

    def add(self, *responses: Response) -> None:
        """Queue more responses."""
        self._responses.extend(responses)

    @property
    def remaining(self) -> int:
        return len(self._responses)

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.requests.append(request)
        if not self._responses:
            return self._fail(ModelError("the scripted model has no response left", retryable=False))
        response = self._responses.pop(0)
        delay, usage = self.delay, None
        if isinstance(response, Scripted):
            delay, usage, response = response.delay, response.usage, response.blocks
        if callable(response) and not isinstance(response, BaseException):
            response = response(request)
        if isinstance(response, BaseException):
            return self._fail(response)
        return self._answer(list(response), delay, usage, request)

    async def _fail(self, exc: BaseException) -> AsyncIterator[ModelEvent]:
        for _ in ():  # makes this an async generator that raises on its first step
            yield Finish("other")
        raise exc

    async def _answer(
        self, blocks: list[Mapping[str, Any]], delay: float, usage: Usage | None, request: ModelRequest
    ) -> AsyncIterator[ModelEvent]:
        calls_tool = False
        out_chars = 0
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                for piece in _pieces(str(block.get("text", ""))):
                    if delay:
                        await anyio.sleep(delay)
                    out_chars += len(piece)
                    yield TextDelta(piece)
            elif kind == "thinking":
                pieces = _pieces(str(block.get("thinking", ""))) or [""]
                for i, piece in enumerate(pieces):
                    if delay:
                        await anyio.sleep(delay)
                    last = i == len(pieces) - 1
                    yield ThinkingDelta(piece, block.get("signature") if last else None)
            elif kind == "tool_use":
                if delay:
                    await anyio.sleep(delay)
                calls_tool = True
                yield ToolUse(str(block["id"]), str(block["name"]), dict(block.get("input") or {}))
            else:
                raise InvalidInput(f"a scripted block has an unknown type {kind!r}", field="type")
        # A made-up but plausible count, cheap on long histories: ~25 tokens a message, the system prompt's 1/4.
        in_tokens = 25 * len(request.messages) + len(request.system) // 4
        yield usage or Usage(input_tokens=max(1, in_tokens), output_tokens=max(1, out_chars // 4))
        yield Finish("tool_use" if calls_tool else "end_turn", "tool_use" if calls_tool else "end_turn")

    async def aclose(self) -> None:
        self.closed = True
