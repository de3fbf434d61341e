"""The Model port: one streamed call to a language model.

A turn loop builds a :class:`ModelRequest` (the agent's system prompt, the conversation so far as
provider-neutral messages, the enabled tools) and reads the :class:`Model`'s answer as a stream of
:data:`ModelEvent` values. Adapters (``anthropic``, ``openai``, :class:`openma.testing.ScriptedModel`,
third parties through the ``openma.models`` entry-point group) translate to and from their provider.

Messages use one neutral shape, the content-block form: ``{"role": "user" | "assistant", "content": [block,
...]}`` where a block is ``{"type": "text", "text"}``, ``{"type": "thinking", "thinking", "signature"?}``,
``{"type": "tool_use", "id", "name", "input"}`` (assistant) or ``{"type": "tool_result", "tool_use_id",
"content": str | [blocks], "is_error"?}`` (user). A tool is ``{"name", "description", "input_schema"}``
(JSON Schema). Adapters convert to their provider's format; the loop never sees a provider's format.

Contract for an adapter's :meth:`Model.stream`:

* It yields events in the order the provider produced them: text and thinking as deltas, each tool call as
  one :class:`ToolUse` with its complete, parsed ``input`` once the provider finished it, :class:`Usage`
  whenever counts are known (the last one wins per field), and exactly one :class:`Finish` last.
* A failure is raised as :class:`openma.errors.ModelError`, with ``retryable`` set for rate limits,
  overload, dropped connections and a stalled stream; never a provider SDK's own exception.
* Cancelling the iteration (an interrupt) closes the underlying request promptly.
* No secret (an API key) appears in any event, error message or repr.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs

#: Why the model stopped: ``end_turn`` (answered), ``tool_use`` (wants tool results), ``max_tokens``,
#: ``stop_sequence``, ``refusal``, or ``other`` for anything else the provider reports.
FinishReason = Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "refusal", "other"]


@attrs.frozen
class ModelRequest:
    """One call: the model's name, what it is told, what it may call."""

    #: The provider's model name (``"claude-sonnet-4-5"``, ``"gpt-4.1"``, ...).
    model: str
    #: The conversation, oldest first, in the neutral content-block shape (see the module docstring).
    messages: Sequence[Mapping[str, Any]]
    #: The system prompt ("" for none).
    system: str = ""
    #: Tools the model may call: ``{"name", "description", "input_schema"}``.
    tools: Sequence[Mapping[str, Any]] = ()
    #: The most tokens the answer may use.
    max_tokens: int = 4096
    #: Provider-specific options passed through as given (temperature, thinking budget, ...).
    options: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class TextDelta:
    """A piece of the answer's text."""

    text: str


@attrs.frozen
class ThinkingDelta:
    """A piece of the model's visible reasoning (``signature`` when the provider signs the block)."""

    thinking: str
    signature: str | None = None


@attrs.frozen
class ToolUse:
    """A complete tool call: ``input`` is the parsed JSON object the model produced."""

    id: str
    name: str
    input: Mapping[str, Any]


@attrs.frozen
class Usage:
    """Token counts known so far (``None`` where the provider did not say)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


@attrs.frozen
class Finish:
    """The last event of a stream."""

    reason: FinishReason
    #: The provider's own word for it, for logs (``"stop"``, ``"length"``, ``"end_turn"``, ...).
    raw_reason: str | None = None


#: What a model's stream yields.
ModelEvent = TextDelta | ThinkingDelta | ToolUse | Usage | Finish


class Model(Protocol):
    """A language model behind one streamed call (see the module docstring for the contract)."""

    #: The adapter's registered name (``"anthropic"``, ``"openai"``, ``"scripted"``, ...).
    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Stream the answer to ``request``; raise :class:`openma.errors.ModelError` on failure."""
        ...

    async def aclose(self) -> None:
        """Release clients and connections. Idempotent."""
        ...
