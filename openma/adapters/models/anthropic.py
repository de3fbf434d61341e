"""The ``anthropic`` model adapter, on the real ``anthropic`` SDK (``pip install 'openma[anthropic]'``).

One streamed ``AsyncAnthropic().messages.create(..., stream=True)`` call per :meth:`AnthropicModel.stream`.
The neutral messages are already Anthropic's content-block shape; the adapter copies the known fields of each
block (a ``thinking`` block without a ``signature`` is left out: the API refuses unsigned thinking) and passes
``system`` and ``tools`` through. ``ModelRequest.options`` go to ``create`` as keywords when it takes them
(``thinking``, ``stop_sequences``, ``tool_choice``, ``metadata``, ...) and in the JSON body otherwise.

Stream events become port events: ``text_delta`` → :class:`TextDelta`, ``thinking_delta`` /
``signature_delta`` → :class:`ThinkingDelta`, a ``tool_use`` block's ``input_json_delta`` pieces → one
:class:`ToolUse` at its ``content_block_stop``, the usage of ``message_start`` and ``message_delta`` →
:class:`Usage`, ``message_delta.stop_reason`` → the :class:`Finish` sent after ``message_stop``
(``pause_turn`` and ``model_context_window_exceeded`` are ``other``). A stream that ends before
``message_stop`` is a dropped connection.

Errors: HTTP 408/429/5xx/529, an ``error`` event of type ``overloaded_error``, ``rate_limit_error``,
``api_error`` or ``timeout_error``, a connection error or a stalled stream are retryable
:class:`~openma.errors.ModelError` (``retry_after`` in the details when the provider said); any other error
is not. The SDK's own retries are off (``max_retries=0``): the turn loop owns retrying.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import anthropic
import httpx2

from openma.adapters.models._common import (
    RETRYABLE_STATUS,
    StreamingModel,
    Translator,
    parse_tool_input,
    retry_after,
    split_options,
)
from openma.errors import ConfigError, ModelError
from openma.ports.model import (
    Finish,
    FinishReason,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ThinkingDelta,
    ToolUse,
    Usage,
)

if TYPE_CHECKING:
    from openma.settings import Settings

__all__ = ["AnthropicModel", "open_model", "to_anthropic_messages"]

#: Error types of a mid-stream ``error`` event (or an error body) that are worth retrying.
RETRYABLE_TYPES: Final = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})
_FINISH: Final[dict[str, FinishReason]] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "refusal": "refusal",
}
_RESERVED: Final = ("model", "messages", "max_tokens", "system", "tools", "stream", "timeout")


def _block(block: Mapping[str, Any]) -> dict[str, Any] | None:
    out = _known(block)
    if out is not None and "cache_control" in block:  # prompt-caching breakpoints are kept on any block
        out["cache_control"] = block["cache_control"]
    return out


def _known(block: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "thinking":
        if not block.get("signature"):
            return None
        return {"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block["id"], "name": block["name"], "input": dict(block["input"])}
    if kind == "tool_result":
        content = block.get("content", "")
        out: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": block["tool_use_id"],
            "content": content if isinstance(content, str) else [dict(b) for b in content],
        }
        if block.get("is_error"):
            out["is_error"] = True
        return out
    return dict(block)  # images, documents, ...: Anthropic's own shapes, passed through


def to_anthropic_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The neutral content-block messages as Anthropic's ``messages`` parameter."""
    out: list[dict[str, Any]] = []
    for message in messages:
        try:
            role, content = message["role"], message["content"]
            if isinstance(content, str):
                blocks = [{"type": "text", "text": content}]
            else:
                blocks = [b for b in (_block(block) for block in content) if b is not None]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"anthropic: a message is not in the neutral content-block shape ({exc!r})") from None
        if blocks:
            out.append({"role": role, "content": blocks})
    return out


class _Stream(Translator):
    def __init__(self) -> None:
        self.tools: dict[int, tuple[str, str, list[str]]] = {}
        self.stop_reason: str | None = None
        self.stopped = False

    def feed(self, chunk: Any) -> Iterable[ModelEvent]:
        kind = chunk.type
        if kind == "message_start":
            usage = chunk.message.usage
            if usage is not None:
                yield Usage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_input_tokens=usage.cache_read_input_tokens,
                    cache_creation_input_tokens=usage.cache_creation_input_tokens,
                )
        elif kind == "content_block_start":
            block = chunk.content_block
            if block.type == "tool_use":
                self.tools[chunk.index] = (block.id, block.name, [])
            elif block.type == "text" and block.text:
                yield TextDelta(block.text)
            elif block.type == "thinking" and block.thinking:
                yield ThinkingDelta(block.thinking)
        elif kind == "content_block_delta":
            delta = chunk.delta
            if delta.type == "text_delta":
                yield TextDelta(delta.text)
            elif delta.type == "thinking_delta":
                yield ThinkingDelta(delta.thinking)
            elif delta.type == "signature_delta":
                yield ThinkingDelta("", signature=delta.signature)
            elif delta.type == "input_json_delta" and chunk.index in self.tools:
                self.tools[chunk.index][2].append(delta.partial_json)
        elif kind == "content_block_stop":
            if chunk.index in self.tools:
                tool_id, name, parts = self.tools.pop(chunk.index)
                yield ToolUse(tool_id, name, parse_tool_input("anthropic", name, "".join(parts)))
        elif kind == "message_delta":
            if chunk.delta.stop_reason is not None:
                self.stop_reason = chunk.delta.stop_reason
            usage = chunk.usage
            if usage is not None:
                yield Usage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_input_tokens=usage.cache_read_input_tokens,
                    cache_creation_input_tokens=usage.cache_creation_input_tokens,
                )
        elif kind == "message_stop":
            self.stopped = True

    def finish(self) -> Iterable[ModelEvent]:
        if not self.stopped:
            raise ModelError(
                "anthropic: the stream ended before the message finished (connection dropped)",
                retryable=True,
                provider="anthropic",
                reason="incomplete",
            )
        raw = self.stop_reason
        yield Finish(_FINISH.get(raw or "", "other"), raw)


def _status_error(exc: anthropic.APIStatusError) -> ModelError:
    status = exc.status_code
    error_type = exc.type
    if error_type is None and isinstance(exc.body, Mapping):  # an error event's body is the event itself
        inner = exc.body.get("error")
        error_type = inner.get("type") if isinstance(inner, Mapping) else None
    text = exc.api_message or exc.message
    mid_stream = status < 400
    retryable = (status in RETRYABLE_STATUS and not mid_stream) or error_type in RETRYABLE_TYPES
    where = "mid-stream error" if mid_stream else f"HTTP {status}"
    details: dict[str, Any] = {"provider": "anthropic", "status": status, "error_type": error_type}
    if not mid_stream:
        wait = retry_after(exc.response.headers)
        if wait is not None:
            details["retry_after"] = wait
    if exc.request_id:
        details["request_id"] = exc.request_id
    message = f"anthropic: {where} {error_type}: {text}" if error_type else f"anthropic: {where}: {text}"
    return ModelError(message, retryable=retryable, **details)


class AnthropicModel(StreamingModel):
    """The ``anthropic`` adapter: an ``AsyncAnthropic`` client and the stream driver (see the module)."""

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        stall_timeout: float = 60.0,
        client: anthropic.AsyncAnthropic | None = None,
    ) -> None:
        super().__init__(model=model, stall_timeout=stall_timeout)
        self._api_key = api_key
        self.base_url = base_url
        self._client = client or anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0)

    def __repr__(self) -> str:
        return f"AnthropicModel(model={self.model!r}, base_url={self.base_url!r}, api_key='***')"

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._api_key,)

    async def _open(self, request: ModelRequest) -> Any:
        create = self._client.messages.create
        kwargs, extra = split_options(create, request.options, _RESERVED)
        if request.system:
            kwargs["system"] = request.system
        if request.tools:
            kwargs["tools"] = [
                {"name": t["name"], "description": t.get("description", ""), "input_schema": t["input_schema"]}
                for t in request.tools
            ]
        if extra:
            kwargs["extra_body"] = extra
        return await create(
            model=self.model_id(request),
            max_tokens=request.max_tokens,
            messages=to_anthropic_messages(request.messages),  # type: ignore[arg-type]
            stream=True,
            **kwargs,
        )

    def _translator(self) -> Translator:
        return _Stream()

    def _error(self, exc: Exception) -> ModelError:
        if isinstance(exc, anthropic.APIStatusError):
            return _status_error(exc)
        if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            return ModelError(
                f"anthropic: connection failed ({type(exc).__name__})", retryable=True, provider="anthropic"
            )
        return ModelError(f"anthropic: {type(exc).__name__}: {exc}", provider="anthropic")

    async def aclose(self) -> None:
        """Close the client's connections. Idempotent."""
        await self._client.close()


def open_model(settings: Settings, *, model: str) -> AnthropicModel:
    """The registry factory: an :class:`AnthropicModel` for ``model`` from ``settings.models``."""
    config = settings.models
    if not config.anthropic_api_key:
        raise ConfigError(
            "the anthropic model adapter needs an API key; set ANTHROPIC_API_KEY", field="anthropic_api_key"
        )
    return AnthropicModel(
        api_key=config.anthropic_api_key,
        model=model,
        base_url=config.anthropic_base_url,
        stall_timeout=config.stall_timeout,
    )
