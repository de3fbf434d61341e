"""The ``anthropic`` and ``openai`` model adapters, each on its real SDK against a local fake server speaking
that provider's streaming wire format: text, thinking, tool-use input split across chunks, usage, exactly one
``Finish``, errors before and in the middle of the stream, a stalled stream, a dropped connection, prompt
close on cancellation, and no API key in any repr or error; on asyncio and on trio."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from openma.adapters.models.anthropic import AnthropicModel
from openma.adapters.models.openai import OpenAIModel
from openma.errors import ModelError
from openma.ports.model import Finish, ModelEvent, ModelRequest, TextDelta, ThinkingDelta, ToolUse, Usage
from tests.fakes import anthropic_server, openai_server
from tests.fakes._sse_app import Reply

pytestmark = pytest.mark.anyio

TOOLS = [{"name": "bash", "description": "Run a command", "input_schema": {"type": "object"}}]
HELLO = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


class Provider:
    """One provider under test: its fake server, how to script it, how to open the adapter."""

    def __init__(self, name: str, fake: Any) -> None:
        self.name = name
        self.fake = fake

    def model(self, stall_timeout: float = 5.0, api_key: str | None = None) -> Any:
        if self.name == "anthropic":
            key = api_key or anthropic_server.FakeAnthropic.API_KEY
            return AnthropicModel(api_key=key, model="m-default", base_url=self.fake.url, stall_timeout=stall_timeout)
        key = api_key or openai_server.FakeOpenAI.API_KEY
        return OpenAIModel(api_key=key, model="m-default", base_url=self.fake.url, stall_timeout=stall_timeout)

    def frames(self, blocks: list[dict[str, Any]], **kw: Any) -> list[Any]:
        if self.name == "anthropic":
            return anthropic_server.message(blocks, **kw)
        return openai_server.completion(blocks, **kw)

    def error_frame(self) -> Any:
        if self.name == "anthropic":
            return anthropic_server.error_event("overloaded_error", "Overloaded")
        return openai_server.error_object("The server is overloaded", "server_error")

    def fatal_frame(self) -> Any:
        if self.name == "anthropic":
            return anthropic_server.error_event("invalid_request_error", "prompt is too long")
        return openai_server.error_object("prompt is too long", "context_length_exceeded", "invalid_request_error")

    def http_error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
        module = anthropic_server if self.name == "anthropic" else openai_server
        return module.http_error(status, kind, message, headers)

    def body(self) -> Any:
        return self.fake.requests[-1].body


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The adapters run on asyncio and on trio (the SDKs' HTTP client is anyio-based)."""
    return str(request.param)


@pytest.fixture(scope="module", params=["anthropic", "openai"])
def served(request: pytest.FixtureRequest) -> Iterator[Provider]:
    fake = anthropic_server.FakeAnthropic() if request.param == "anthropic" else openai_server.FakeOpenAI()
    with fake:
        yield Provider(request.param, fake)


@pytest.fixture
def provider(served: Provider) -> Provider:
    served.fake.app.reset()
    return served


async def collect(model: Any, request: ModelRequest) -> list[ModelEvent]:
    try:
        return [event async for event in model.stream(request)]
    finally:
        await model.aclose()


def request(**kw: Any) -> ModelRequest:
    return ModelRequest(**{"model": "", "messages": HELLO, **kw})


async def test_text_thinking_tool_use_and_usage(provider: Provider) -> None:
    command = {"command": "echo 'héllo' && ls -la /tmp", "timeout": 30}
    blocks = [
        {"type": "thinking", "thinking": "I should list the files."},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "tu_1", "name": "bash", "input": command},
    ]
    provider.fake.reply(Reply(frames=provider.frames(blocks, chunk=2)))
    events = await collect(provider.model(), request(tools=TOOLS))

    thinking = "".join(e.thinking for e in events if isinstance(e, ThinkingDelta))
    assert thinking == "I should list the files."
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me look."
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1  # streamed as deltas, not at the end
    [tool] = [e for e in events if isinstance(e, ToolUse)]
    assert tool == ToolUse("tu_1", "bash", command)  # the input JSON came in 2-character pieces
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_use"
    assert sum(isinstance(e, Finish) for e in events) == 1
    usage: dict[str, int] = {}  # the last value of each field wins
    for event in events:
        if isinstance(event, Usage):
            for field in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
                if getattr(event, field) is not None:
                    usage[field] = getattr(event, field)
    assert usage == (
        {"input_tokens": 12, "output_tokens": 34}
        if provider.name == "anthropic"
        else {"input_tokens": 21, "output_tokens": 8}
    )
    if provider.name == "anthropic":
        assert [e.signature for e in events if isinstance(e, ThinkingDelta) and e.signature] == ["sig-fake"]


async def test_two_tool_calls_and_an_end_turn(provider: Provider) -> None:
    blocks = [
        {"type": "tool_use", "id": "a", "name": "read", "input": {"file_path": "x.txt"}},
        {"type": "tool_use", "id": "b", "name": "glob", "input": {"pattern": "**/*.py"}},
    ]
    provider.fake.reply(Reply(frames=provider.frames(blocks, chunk=1)), Reply(frames=provider.frames([])))
    events = await collect(provider.model(), request(tools=TOOLS))
    assert [e for e in events if isinstance(e, ToolUse)] == [
        ToolUse("a", "read", {"file_path": "x.txt"}),
        ToolUse("b", "glob", {"pattern": "**/*.py"}),
    ]
    events = await collect(provider.model(), request())
    assert events[-1] == Finish("end_turn", "end_turn" if provider.name == "anthropic" else "stop")


async def test_a_truncated_answer_finishes_with_max_tokens(provider: Provider) -> None:
    key, raw = ("stop_reason", "max_tokens") if provider.name == "anthropic" else ("finish_reason", "length")
    provider.fake.reply(Reply(frames=provider.frames([{"type": "text", "text": "abc"}], **{key: raw})))
    events = await collect(provider.model(), request())
    assert events[-1] == Finish("max_tokens", raw)


async def test_an_unknown_stop_reason_is_other(provider: Provider) -> None:
    key, raw = ("stop_reason", "pause_turn") if provider.name == "anthropic" else ("finish_reason", "eos_token")
    provider.fake.reply(Reply(frames=provider.frames([{"type": "text", "text": "abc"}], **{key: raw})))
    events = await collect(provider.model(), request())
    assert events[-1] == Finish("other", raw)


async def test_the_request_is_converted_to_the_providers_format(provider: Provider) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "list files"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s1"},
                {"type": "text", "text": "Running ls."},
                {"type": "tool_use", "id": "tu_9", "name": "bash", "input": {"command": "ls"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "tu_9", "content": "a\nb", "is_error": True}],
        },
    ]
    provider.fake.reply(Reply(frames=provider.frames([{"type": "text", "text": "ok"}])))
    req = ModelRequest(
        model=f"{provider.name}:model-x",
        messages=messages,
        system="Be brief.",
        tools=TOOLS,
        max_tokens=123,
        options={"stop_sequences": ["END"]} if provider.name == "anthropic" else {"temperature": 0.5},
    )
    await collect(provider.model(), req)
    body = provider.body()
    assert body["model"] == "model-x" and body["stream"] is True  # the adapter's prefix is stripped
    if provider.name == "anthropic":
        assert body["system"] == "Be brief." and body["max_tokens"] == 123 and body["stop_sequences"] == ["END"]
        assert body["tools"] == TOOLS
        assert body["messages"] == messages  # already Anthropic's shape
    else:
        assert body["max_tokens"] == 123 and body["temperature"] == 0.5  # base_url set: max_tokens
        assert body["stream_options"] == {"include_usage": True}
        assert body["tools"] == [
            {
                "type": "function",
                "function": {"name": "bash", "description": "Run a command", "parameters": {"type": "object"}},
            }
        ]
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "list files"},
            {
                "role": "assistant",
                "content": "Running ls.",
                "tool_calls": [
                    {"id": "tu_9", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "tu_9", "content": "Error: a\nb"},
        ]


async def test_an_overloaded_error_mid_stream_is_retryable(provider: Provider) -> None:
    frames = provider.frames([{"type": "text", "text": "Hello there"}])
    provider.fake.reply(Reply(frames=[*frames[:4], provider.error_frame()]))
    seen: list[ModelEvent] = []
    with pytest.raises(ModelError) as info:
        model = provider.model()
        try:
            async for event in model.stream(request()):
                seen.append(event)
        finally:
            await model.aclose()
    assert info.value.retryable and info.value.code == "model_error"
    assert "overloaded" in info.value.message.lower()
    assert not any(isinstance(e, Finish) for e in seen)


async def test_a_fatal_error_mid_stream_is_not_retryable(provider: Provider) -> None:
    frames = provider.frames([{"type": "text", "text": "Hello"}])
    provider.fake.reply(Reply(frames=[*frames[:3], provider.fatal_frame()]))
    with pytest.raises(ModelError) as info:
        await collect(provider.model(), request())
    assert not info.value.retryable and "prompt is too long" in info.value.message


async def test_http_429_is_retryable_with_its_retry_after(provider: Provider) -> None:
    kind = "rate_limit_error" if provider.name == "anthropic" else "rate_limit_exceeded"
    provider.fake.reply(provider.http_error(429, kind, "Slow down", {"retry-after": "7"}))
    with pytest.raises(ModelError) as info:
        await collect(provider.model(), request())
    assert info.value.retryable
    assert info.value.details["status"] == 429 and info.value.details["retry_after"] == 7.0
    assert info.value.details["request_id"] == "req_fake"


@pytest.mark.parametrize("status", [500, 503, 529])
async def test_server_errors_and_overload_are_retryable(provider: Provider, status: int) -> None:
    provider.fake.reply(provider.http_error(status, "overloaded_error", "Overloaded"))
    with pytest.raises(ModelError) as info:
        await collect(provider.model(), request())
    assert info.value.retryable and info.value.details["status"] == status


async def test_http_400_is_not_retryable(provider: Provider) -> None:
    provider.fake.reply(provider.http_error(400, "invalid_request_error", "messages: field required"))
    with pytest.raises(ModelError) as info:
        await collect(provider.model(), request())
    assert not info.value.retryable and info.value.details["status"] == 400
    assert "messages: field required" in info.value.message


async def test_a_stalled_stream_fails_retryably_and_closes_the_connection(provider: Provider) -> None:
    frames = provider.frames([{"type": "text", "text": "Hello there"}])
    provider.fake.reply(Reply(frames=frames, stall_after=3))
    started = time.monotonic()
    with pytest.raises(ModelError) as info:
        await collect(provider.model(stall_timeout=0.3), request())
    assert info.value.retryable and info.value.details["reason"] == "stalled"
    assert time.monotonic() - started < 3
    assert await anyio.to_thread.run_sync(provider.fake.app.disconnects.acquire, True, 5)


async def test_slow_response_headers_count_as_a_stall(provider: Provider) -> None:
    provider.fake.reply(Reply(frames=provider.frames([]), delay=2.0))
    with pytest.raises(ModelError) as info:
        await collect(provider.model(stall_timeout=0.3), request())
    assert info.value.retryable and info.value.details["reason"] == "stalled"


@pytest.mark.parametrize("after", [0, 4])
async def test_a_dropped_connection_is_retryable(provider: Provider, after: int) -> None:
    frames = provider.frames([{"type": "text", "text": "Hello there"}])
    provider.fake.reply(Reply(frames=frames, drop_after=after))
    with pytest.raises(ModelError) as info:
        await collect(provider.model(), request())
    assert info.value.retryable


async def test_a_refused_connection_is_retryable(provider: Provider) -> None:
    model = provider.model()
    model._client = model._client.with_options(base_url="http://127.0.0.1:1/v1")  # nothing listens there
    with pytest.raises(ModelError) as info:
        await collect(model, request())
    assert info.value.retryable and "connection failed" in info.value.message


async def test_a_stream_that_ends_early_is_a_dropped_connection(provider: Provider) -> None:
    frames = provider.frames([{"type": "text", "text": "Hello there"}])
    cut = [f for f in frames if not (f[0] == "message_stop" or "finish_reason" in json.dumps(f[1]))]
    cut = [f for f in cut if f[1] != "[DONE]"] + ([(None, "[DONE]")] if provider.name == "openai" else [])
    cut = [f for f in cut if '"finish_reason": "' not in json.dumps(f[1])]
    provider.fake.reply(Reply(frames=cut))
    with pytest.raises(ModelError) as info:
        await collect(provider.model(), request())
    assert info.value.retryable and info.value.details["reason"] == "incomplete"


async def test_invalid_tool_input_json_is_an_error(provider: Provider) -> None:
    blocks = [{"type": "tool_use", "id": "t", "name": "bash", "raw_input": '{"command": "ls'}]
    provider.fake.reply(Reply(frames=provider.frames(blocks)))
    with pytest.raises(ModelError) as info:
        await collect(provider.model(), request(tools=TOOLS))
    assert not info.value.retryable and info.value.details["tool"] == "bash"


async def test_cancelling_the_iteration_closes_the_stream_promptly(provider: Provider) -> None:
    frames = provider.frames([{"type": "text", "text": "Hello there"}])
    provider.fake.reply(Reply(frames=frames, stall_after=4))
    model = provider.model(stall_timeout=30)
    first = anyio.Event()
    cancelled_at = 0.0
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async for _ in model.stream(request()):
                first.set()

        tg.start_soon(consume)
        await first.wait()
        cancelled_at = time.monotonic()
        tg.cancel_scope.cancel()
    assert time.monotonic() - cancelled_at < 1.0
    assert await anyio.to_thread.run_sync(provider.fake.app.disconnects.acquire, True, 5)
    await model.aclose()


async def test_a_consumer_that_stops_early_closes_the_stream(provider: Provider) -> None:
    provider.fake.reply(Reply(frames=provider.frames([{"type": "text", "text": "Hello there"}]), stall_after=4))
    model = provider.model(stall_timeout=30)
    stream = model.stream(request())
    await stream.__anext__()
    await stream.aclose()  # type: ignore[attr-defined]
    assert await anyio.to_thread.run_sync(provider.fake.app.disconnects.acquire, True, 5)
    await model.aclose()


async def test_the_api_key_never_appears(provider: Provider) -> None:
    secret = "sk-live-SECRET-0123456789"
    model = provider.model(api_key=secret)
    assert secret not in repr(model) and "***" in repr(model)
    with pytest.raises(ModelError) as info:  # the fake answers 401 to an unknown key
        await collect(model, request())
    assert info.value.details["status"] == 401 and not info.value.retryable
    for text in (str(info.value), repr(info.value), json.dumps(info.value.details)):
        assert secret not in text


async def test_an_error_quoting_the_key_is_masked(provider: Provider) -> None:
    secret = "sk-live-ECHOED-0123456789"
    provider.fake.reply(provider.http_error(400, "invalid_request_error", f"bad key {secret}"))
    model = provider.model()
    model._api_key = secret  # as if the provider had echoed the configured key
    with pytest.raises(ModelError) as info:
        await collect(model, request())
    assert secret not in str(info.value) and "***" in info.value.message


async def test_options_that_the_adapter_sets_are_refused(provider: Provider) -> None:
    with pytest.raises(ModelError, match="cannot be set"):
        await collect(provider.model(), request(options={"stream": False}))
    assert provider.fake.requests == []
