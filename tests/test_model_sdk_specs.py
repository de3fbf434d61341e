"""The model adapters' SDK calls checked against the *installed* SDK signatures (strict autospecs): a renamed or
removed SDK parameter fails here, not in production. The streamed chunks are the SDKs' own typed models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import anyio
import pydantic
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from openma.adapters.models.anthropic import AnthropicModel
from openma.adapters.models.openai import OpenAIModel
from openma.ports.model import Finish, ModelRequest, TextDelta, ToolUse
from tests.fakes import anthropic_server, openai_server

pytestmark = pytest.mark.anyio

TOOLS = [{"name": "bash", "description": "Run", "input_schema": {"type": "object"}}]
REQUEST = ModelRequest(
    model="",
    messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    system="sys",
    tools=TOOLS,
)


class TypedStream:
    """Stands in for the SDK's ``AsyncStream``: yields typed chunks; records ``close``."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks
        self.closed = False

    async def _gen(self) -> AsyncIterator[Any]:
        for chunk in self.chunks:
            yield chunk

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen()

    async def close(self) -> None:
        self.closed = True


async def ready(value: Any) -> Any:
    """The SDKs' ``create`` is a plain function returning a coroutine (a decorator wraps the ``async def``),
    so its autospec is a plain mock: it returns this coroutine, as the real one does."""
    return value


def anthropic_client(frames: list[Any]) -> tuple[Any, TypedStream]:
    import anthropic
    from anthropic.resources.messages import AsyncMessages
    from anthropic.types import RawMessageStreamEvent

    adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    stream = TypedStream([adapter.validate_python(data) for event, data in frames if event != "ping"])
    client = mock.create_autospec(anthropic.AsyncAnthropic, instance=True)
    client.messages = mock.create_autospec(AsyncMessages, instance=True)
    client.messages.create.side_effect = lambda *a, **k: ready(stream)
    return client, stream


def openai_client(frames: list[Any]) -> tuple[Any, TypedStream]:
    import openai
    from openai.resources.chat import AsyncChat
    from openai.resources.chat.completions import AsyncCompletions
    from openai.types.chat import ChatCompletionChunk

    stream = TypedStream([ChatCompletionChunk.model_validate(data) for _, data in frames if data != "[DONE]"])
    client = mock.create_autospec(openai.AsyncOpenAI, instance=True)
    client.chat = mock.create_autospec(AsyncChat, instance=True)
    client.chat.completions = mock.create_autospec(AsyncCompletions, instance=True)
    client.chat.completions.create.side_effect = lambda *a, **k: ready(stream)
    return client, stream


async def test_autospec_rejects_a_wrong_keyword() -> None:
    client, _ = anthropic_client([])
    with pytest.raises(TypeError):
        client.messages.create(model="m", max_tokens=1, messages=[], stream=True, system_prompt="x")
    oai, _ = openai_client([])
    with pytest.raises(TypeError):
        oai.chat.completions.create(model="m", messages=[], stream=True, max_output_tokens=3)


async def test_anthropic_calls_messages_create_as_the_sdk_defines_it() -> None:
    blocks = [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "t1", "name": "bash", "input": {"a": 1}}]
    client, stream = anthropic_client(anthropic_server.message(blocks))
    model = AnthropicModel(api_key="k" * 20, model="claude-x", client=client)
    options = {"thinking": {"type": "enabled", "budget_tokens": 2048}, "stop_sequences": ["X"], "custom_flag": True}
    events = [e async for e in model.stream(ModelRequest(**{**vars_of(REQUEST), "options": options}))]
    await model.aclose()
    assert [e for e in events if isinstance(e, TextDelta | ToolUse | Finish)] == [
        TextDelta("hi"),
        ToolUse("t1", "bash", {"a": 1}),
        Finish("tool_use", "tool_use"),
    ]
    client.messages.create.assert_called_once()
    kwargs = client.messages.create.call_args.kwargs
    assert kwargs["model"] == "claude-x" and kwargs["stream"] is True and kwargs["system"] == "sys"
    assert kwargs["thinking"] == options["thinking"] and kwargs["tools"] == TOOLS
    assert kwargs["stop_sequences"] == ["X"]
    assert kwargs["extra_body"] == {"custom_flag": True}  # what the SDK does not take goes in the body
    assert stream.closed
    client.close.assert_awaited_once()


async def test_openai_calls_chat_completions_create_as_the_sdk_defines_it() -> None:
    frames = openai_server.completion([{"type": "text", "text": "hey"}])
    client, stream = openai_client(frames)
    model = OpenAIModel(api_key="k" * 20, model="gpt-x", client=client)  # OpenAI itself: no base_url
    events = [e async for e in model.stream(ModelRequest(**{**vars_of(REQUEST), "options": {"seed": 7, "top_k": 3}}))]
    await model.aclose()
    assert TextDelta("hey") in events and events[-1] == Finish("end_turn", "stop")
    kwargs = client.chat.completions.create.call_args.kwargs
    assert kwargs["model"] == "gpt-x" and kwargs["stream"] is True
    assert kwargs["max_completion_tokens"] == 4096 and "max_tokens" not in kwargs
    assert kwargs["stream_options"] == {"include_usage": True} and kwargs["seed"] == 7
    assert kwargs["extra_body"] == {"top_k": 3}  # vLLM's sampling knob, not an OpenAI parameter
    assert stream.closed
    client.close.assert_awaited_once()


def vars_of(request: ModelRequest) -> dict[str, Any]:
    import attrs

    return attrs.asdict(request, recurse=False)


# -- any split of a tool's input JSON gives the same parsed input -----------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@hsettings(max_examples=60, deadline=None)
@given(
    tool_input=st.dictionaries(st.text(max_size=6), _JSON, max_size=4),
    text=st.text(max_size=20),
    chunk=st.integers(1, 7),
    which=st.sampled_from(["anthropic", "openai"]),
)
def test_any_split_of_text_and_tool_input_streams_back_whole(
    tool_input: dict[str, Any], text: str, chunk: int, which: str
) -> None:
    blocks = [{"type": "text", "text": text}, {"type": "tool_use", "id": "t", "name": "f", "input": tool_input}]
    if which == "anthropic":
        client, _ = anthropic_client(anthropic_server.message(blocks, chunk=chunk))
        model: Any = AnthropicModel(api_key="k" * 20, model="m", client=client)
    else:
        client, _ = openai_client(openai_server.completion(blocks, chunk=chunk))
        model = OpenAIModel(api_key="k" * 20, model="m", client=client)

    async def run() -> list[Any]:
        return [e async for e in model.stream(REQUEST)]

    events = anyio.run(run)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text
    assert [e for e in events if isinstance(e, ToolUse)] == [ToolUse("t", "f", tool_input)]
    assert [e for e in events if isinstance(e, Finish)] == [events[-1]] and events[-1].reason == "tool_use"
