"""The model adapters against the real providers. Run only when ``ANTHROPIC_API_KEY`` / ``OPENAI_API_KEY``
are set (each call costs a few tokens)::

    ANTHROPIC_API_KEY=... OPENAI_API_KEY=... python -m pytest -m live tests/test_model_live.py

``OPENMA_LIVE_ANTHROPIC_MODEL`` / ``OPENMA_LIVE_OPENAI_MODEL`` pick the models (small, cheap ones by
default); ``OPENAI_BASE_URL`` points the ``openai`` test at an OpenAI-compatible server instead.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from openma.adapters.models import open_model
from openma.errors import ModelError
from openma.ports.model import Finish, ModelRequest, TextDelta, ToolUse, Usage
from openma.settings import Settings

pytestmark = [pytest.mark.live, pytest.mark.anyio]

MODELS = {
    "anthropic": os.environ.get("OPENMA_LIVE_ANTHROPIC_MODEL", "claude-haiku-4-5"),
    "openai": os.environ.get("OPENMA_LIVE_OPENAI_MODEL", "gpt-4.1-mini"),
}
KEYS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(params=["anthropic", "openai"])
def provider(request: pytest.FixtureRequest) -> str:
    if not os.environ.get(KEYS[request.param]):
        pytest.skip(f"live model tests: set {KEYS[request.param]} to run them against {request.param}")
    return str(request.param)


async def answer(provider: str, request: ModelRequest) -> list[Any]:
    model = await open_model(Settings.from_env(), f"{provider}:{MODELS[provider]}")
    try:
        return [event async for event in model.stream(request)]
    finally:
        await model.aclose()


async def test_a_short_answer(provider: str) -> None:
    request = ModelRequest(
        model="",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Reply with the single word: pong"}]}],
        max_tokens=20,
    )
    events = await answer(provider, request)
    assert "pong" in "".join(e.text for e in events if isinstance(e, TextDelta)).lower()
    assert isinstance(events[-1], Finish) and events[-1].reason == "end_turn"
    assert any(isinstance(e, Usage) and e.input_tokens for e in events)


async def test_a_tool_call_and_its_result(provider: str) -> None:
    ask = {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris? Use the tool."}]}
    request = ModelRequest(model="", messages=[ask], tools=[TOOL], max_tokens=200)
    events = await answer(provider, request)
    [call] = [e for e in events if isinstance(e, ToolUse)][:1]
    assert call.name == "get_weather" and "paris" in str(call.input.get("city", "")).lower()
    assert events[-1] == Finish("tool_use", events[-1].raw_reason)
    said = "".join(e.text for e in events if isinstance(e, TextDelta))
    assistant = {
        "role": "assistant",
        "content": [*([{"type": "text", "text": said}] if said else []), {**_block(call)}],
    }
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]}
    follow = await answer(provider, ModelRequest(model="", messages=[ask, assistant, result], tools=[TOOL]))
    assert "21" in "".join(e.text for e in follow if isinstance(e, TextDelta))


async def test_a_bad_key_is_a_non_retryable_error(provider: str) -> None:
    settings = Settings.from_env(**{f"{provider}_api_key": "sk-invalid-0000000000"})
    model = await open_model(settings, f"{provider}:{MODELS[provider]}")
    request = ModelRequest(model="", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    with pytest.raises(ModelError) as info:
        async for _ in model.stream(request):
            pass
    await model.aclose()
    assert not info.value.retryable and "sk-invalid-0000000000" not in str(info.value)


def _block(call: ToolUse) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": dict(call.input)}
