"""The ``openai`` model adapter, on the real ``openai`` SDK (``pip install 'openma[openai]'``): OpenAI's chat
completions and every server that speaks them (vLLM, Ollama, LiteLLM, ...) through ``OPENAI_BASE_URL``.

One streamed ``AsyncOpenAI().chat.completions.create(..., stream=True, stream_options={"include_usage":
True})`` call per :meth:`OpenAIModel.stream`. The neutral messages become chat messages: ``system`` first,
an assistant's text blocks joined into ``content`` and its ``tool_use`` blocks into ``tool_calls`` (thinking
is not sent back: chat completions take none), a user's ``tool_result`` blocks into ``role: "tool"``
messages (before the user's own text; an ``is_error`` result is prefixed ``"Error: "``). Tools become
``{"type": "function", "function": {"name", "description", "parameters"}}``. The answer's length limit is
``max_completion_tokens`` on OpenAI itself and ``max_tokens`` on another server (both accept it); an option
naming either wins.

Chunks become port events: ``delta.content`` (and ``delta.refusal``) → :class:`TextDelta`,
``delta.reasoning_content`` / ``delta.reasoning`` (vLLM, Ollama, DeepSeek) → :class:`ThinkingDelta`,
``delta.tool_calls`` pieces (by ``index``) → one :class:`ToolUse` each once ``finish_reason`` arrives, the
usage chunk → :class:`Usage`, and ``finish_reason`` → the :class:`Finish` sent after the stream ends
(``stop`` → ``end_turn``, or ``tool_use`` when tool calls came; ``tool_calls`` → ``tool_use``; ``length`` →
``max_tokens``; ``content_filter`` → ``refusal``). A stream that ends without a ``finish_reason`` is a
dropped connection.

Errors: HTTP 408/429/5xx, a mid-stream error object whose code or type says rate limit, overload or server
error, a connection error or a stalled stream are retryable :class:`~openma.errors.ModelError`; any other is
not. The SDK's own retries are off (``max_retries=0``): the turn loop owns retrying.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx2
import openai

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

__all__ = ["OpenAIModel", "open_model", "to_openai_messages"]

_FINISH: Final[dict[str, FinishReason]] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}
_RESERVED: Final = ("model", "messages", "stream", "tools", "timeout")
#: Words in a mid-stream error's code or type that make it worth retrying.
_RETRYABLE_WORDS: Final = ("rate_limit", "overload", "server_error", "unavailable", "timeout", "internal")
#: What the openai SDK sends as the key to a server that needs none (it insists on a value).
NO_KEY: Final = "no-key"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if block.get("type") == "text":
            parts.append(block["text"])
        else:
            parts.append(f"[{block.get('type', 'content')} omitted]")
    return "\n".join(parts)


def to_openai_messages(system: str, messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The neutral content-block messages (and ``system``) as chat-completions ``messages``."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in messages:
        try:
            role, content = message["role"], message["content"]
            blocks: list[Mapping[str, Any]] = (
                [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            )
            texts = [b["text"] for b in blocks if b["type"] == "text"]
            if role == "assistant":
                calls = [
                    {
                        "id": b["id"],
                        "type": "function",
                        "function": {"name": b["name"], "arguments": json.dumps(dict(b["input"]))},
                    }
                    for b in blocks
                    if b["type"] == "tool_use"
                ]
                item: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
                if calls:
                    item["tool_calls"] = calls
                if item["content"] is not None or calls:
                    out.append(item)
                continue
            for b in blocks:
                if b["type"] == "tool_result":
                    result = _text(b.get("content", ""))
                    out.append(
                        {
                            "role": "tool",
                            "tool_call_id": b["tool_use_id"],
                            "content": f"Error: {result}" if b.get("is_error") else result,
                        }
                    )
            if texts:
                out.append({"role": role, "content": "\n".join(texts)})
        except (KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"openai: a message is not in the neutral content-block shape ({exc!r})") from None
    return out


class _Stream(Translator):
    def __init__(self) -> None:
        self.calls: dict[int, list[Any]] = {}  # index -> [id, name, argument pieces]
        self.finish_reason: str | None = None
        self.refused = False

    def _tool_uses(self) -> Iterable[ModelEvent]:
        for index in sorted(self.calls):
            call_id, name, parts = self.calls.pop(index)
            yield ToolUse(
                call_id or f"call_{uuid.uuid4().hex[:24]}", name, parse_tool_input("openai", name, "".join(parts))
            )

    def feed(self, chunk: Any) -> Iterable[ModelEvent]:
        usage = getattr(chunk, "usage", None)
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                if isinstance(reasoning, str) and reasoning:
                    yield ThinkingDelta(reasoning)
                if delta.content:
                    yield TextDelta(delta.content)
                if delta.refusal:
                    self.refused = True
                    yield TextDelta(delta.refusal)
                for call in delta.tool_calls or ():
                    entry = self.calls.setdefault(call.index, [None, "", []])
                    if call.id:
                        entry[0] = call.id
                    if call.function is not None:
                        if call.function.name:
                            entry[1] = call.function.name
                        if call.function.arguments:
                            entry[2].append(call.function.arguments)
            if choice.finish_reason is not None:
                had_calls = bool(self.calls)
                yield from self._tool_uses()
                reason = choice.finish_reason
                self.finish_reason = "tool_calls" if had_calls and reason == "stop" else reason
        if usage is not None:
            details = getattr(usage, "prompt_tokens_details", None)
            yield Usage(
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                cache_read_input_tokens=getattr(details, "cached_tokens", None),
            )

    def finish(self) -> Iterable[ModelEvent]:
        if self.finish_reason is None:
            raise ModelError(
                "openai: the stream ended before the answer finished (connection dropped)",
                retryable=True,
                provider="openai",
                reason="incomplete",
            )
        raw = self.finish_reason
        reason = _FINISH.get(raw, "other")
        yield Finish("refusal" if self.refused and reason == "end_turn" else reason, raw)


def _error(exc: Exception) -> ModelError:
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = exc.code or exc.type
        details: dict[str, Any] = {"provider": "openai", "status": status, "error_type": code}
        wait = retry_after(exc.response.headers)
        if wait is not None:
            details["retry_after"] = wait
        if exc.request_id:
            details["request_id"] = exc.request_id
        text = exc.message.removeprefix(f"Error code: {status} - ")
        return ModelError(f"openai: HTTP {status}: {text}", retryable=status in RETRYABLE_STATUS, **details)
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return ModelError(f"openai: connection failed ({type(exc).__name__})", retryable=True, provider="openai")
    if isinstance(exc, openai.APIError):  # an error object in the middle of the stream
        body = exc.body if isinstance(exc.body, Mapping) else {}
        code = body.get("code") or body.get("type")
        words = f"{body.get('code', '')} {body.get('type', '')}".lower()
        retryable = any(w in words for w in _RETRYABLE_WORDS) or (isinstance(code, int) and code in RETRYABLE_STATUS)
        return ModelError(
            f"openai: mid-stream error: {exc.message}", retryable=retryable, provider="openai", error_type=code
        )
    return ModelError(f"openai: {type(exc).__name__}: {exc}", provider="openai")


class OpenAIModel(StreamingModel):
    """The ``openai`` adapter: an ``AsyncOpenAI`` client and the stream driver (see the module)."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None,
        model: str,
        base_url: str | None = None,
        stall_timeout: float = 60.0,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        super().__init__(model=model, stall_timeout=stall_timeout)
        if not api_key and not base_url:
            raise ConfigError("the openai model adapter needs an API key; set OPENAI_API_KEY", field="openai_api_key")
        self._api_key = api_key
        self.base_url = base_url
        self._client = client or openai.AsyncOpenAI(api_key=api_key or NO_KEY, base_url=base_url, max_retries=0)

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return f"OpenAIModel(model={self.model!r}, base_url={self.base_url!r}, api_key={key})"

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._api_key,)

    async def _open(self, request: ModelRequest) -> Any:
        create = self._client.chat.completions.create
        kwargs, extra = split_options(create, request.options, _RESERVED)
        if "max_tokens" not in kwargs and "max_completion_tokens" not in kwargs:
            kwargs["max_tokens" if self.base_url else "max_completion_tokens"] = request.max_tokens
        kwargs.setdefault("stream_options", {"include_usage": True})
        if request.tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "parameters": t["input_schema"],
                    },
                }
                for t in request.tools
            ]
        if extra:
            kwargs["extra_body"] = extra
        return await create(
            model=self.model_id(request),
            messages=to_openai_messages(request.system, request.messages),  # type: ignore[arg-type]
            stream=True,
            **kwargs,
        )

    def _translator(self) -> Translator:
        return _Stream()

    def _error(self, exc: Exception) -> ModelError:
        return _error(exc)

    async def aclose(self) -> None:
        """Close the client's connections. Idempotent."""
        await self._client.close()


def open_model(settings: Settings, *, model: str) -> OpenAIModel:
    """The registry factory: an :class:`OpenAIModel` for ``model`` from ``settings.models``."""
    config = settings.models
    return OpenAIModel(
        api_key=config.openai_api_key,
        model=model,
        base_url=config.openai_base_url,
        stall_timeout=config.stall_timeout,
    )
