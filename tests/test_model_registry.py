"""Choosing a model: ``ModelConfig`` in ``Settings``, the ``openma.models`` registry, ``resolve_model`` /
``open_model`` for an agent's ``model``, and ``openma doctor``'s model check (which never prints a key)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from openma import registry
from openma.adapters.models import ModelSpec, open_model, resolve_model
from openma.adapters.models.anthropic import AnthropicModel
from openma.adapters.models.openai import OpenAIModel
from openma.cli import main
from openma.config import ModelConfig
from openma.errors import ConfigError, OpenmaError
from openma.ports.model import Finish, ModelEvent, ModelRequest, TextDelta
from openma.settings import Settings

pytestmark = pytest.mark.anyio

SECRET = "sk-ant-TOPSECRET-0123456789"


# -- settings -------------------------------------------------------------------------------------------


def test_model_settings_come_from_the_environment_and_hide_keys() -> None:
    env = {
        "OPENMA_MODEL": "openai:gpt-4.1",
        "ANTHROPIC_API_KEY": SECRET,
        "OPENAI_API_KEY": "sk-proj-OTHERSECRET",
        "OPENAI_BASE_URL": "http://localhost:11434/v1",
        "OPENMA_MODEL_STALL_TIMEOUT": "12.5",
    }
    s = Settings.from_env(env)
    assert s.model == s.models.default == "openai:gpt-4.1"
    assert s.anthropic_api_key == SECRET and s.openai_base_url == "http://localhost:11434/v1"
    assert s.model_stall_timeout == 12.5
    for text in (repr(s), repr(s.models), str(s)):
        assert SECRET not in text and "OTHERSECRET" not in text
    assert "anthropic_api_key='***'" in repr(s)
    assert Settings(models=ModelConfig(default="claude-x"), model="gpt-4.1").model == "gpt-4.1"  # flat name wins


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model_stall_timeout": 0}, "model_stall_timeout"),
        ({"model_stall_timeout": float("nan")}, "model_stall_timeout"),
        ({"model_stall_timeout": "5"}, "model_stall_timeout"),
        ({"model": 3}, "model"),
        ({"anthropic_api_key": b"k"}, "anthropic_api_key"),
    ],
)
def test_bad_model_settings_are_config_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**kwargs)
    assert info.value.details["field"] == field


def test_a_bad_stall_timeout_variable_names_it() -> None:
    with pytest.raises(ConfigError, match="OPENMA_MODEL_STALL_TIMEOUT"):
        Settings.from_env({"OPENMA_MODEL_STALL_TIMEOUT": "soon"})


# -- resolving an agent's model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("default", "spec", "expected"),
    [
        (None, "claude-sonnet-4-5", ModelSpec("anthropic", "claude-sonnet-4-5")),
        (None, "gpt-4.1", ModelSpec("openai", "gpt-4.1")),
        (None, "o3-mini", ModelSpec("openai", "o3-mini")),
        (None, "openai:llama3.1:8b", ModelSpec("openai", "llama3.1:8b")),
        (None, "anthropic:claude-opus-4-1", ModelSpec("anthropic", "claude-opus-4-1")),
        ("openai:gpt-4.1", "qwen2.5-coder", ModelSpec("openai", "qwen2.5-coder")),  # the default's provider
        ("openai:gpt-4.1", "claude-sonnet-4-5", ModelSpec("anthropic", "claude-sonnet-4-5")),  # its family
        ("openai:gpt-4.1", "openai:claude-sonnet-4-5", ModelSpec("openai", "claude-sonnet-4-5")),  # LiteLLM
        ("claude-sonnet-4-5", None, ModelSpec("anthropic", "claude-sonnet-4-5")),
        ("openai:gpt-4.1", None, ModelSpec("openai", "gpt-4.1")),
        (
            None,
            {"id": "claude-sonnet-4-5", "speed": "fast"},
            ModelSpec("anthropic", "claude-sonnet-4-5", {"speed": "fast"}),
        ),
        (None, {"id": "llama3", "provider": "openai"}, ModelSpec("openai", "llama3")),
    ],
)
def test_resolve_model(default: str | None, spec: object, expected: ModelSpec) -> None:
    assert resolve_model(Settings(model=default), spec) == expected


@pytest.mark.parametrize(
    ("default", "spec", "needle"),
    [
        (None, None, "OPENMA_MODEL"),
        (None, "llama3", "provider:llama3"),
        (None, "", "non-empty"),
        (None, " gpt-4.1", "non-empty"),
        (None, "anthropic:", "non-empty"),
        (None, {"provider": "openai"}, "'id'"),
        (None, {"id": "x", "provider": "bedrock"}, "unknown model provider 'bedrock'"),
        (None, {"id": 5}, "non-empty"),
        (None, 42, "a model is a string"),
        (None, ["gpt-4.1"], "a model is a string"),
        ("llama3", None, "provider:llama3"),
    ],
)
def test_unresolvable_models_are_config_errors(default: str | None, spec: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")) as info:
        resolve_model(Settings(model=default), spec)
    assert info.value.details["field"] == "model"


@hsettings(max_examples=200, deadline=None)
@given(
    spec=st.none()
    | st.text(max_size=40)
    | st.integers()
    | st.dictionaries(st.sampled_from(["id", "provider", "speed"]), st.text(max_size=10) | st.integers(), max_size=3),
    default=st.none() | st.sampled_from(["openai:gpt-4.1", "claude-x", "llama3", "anthropic:claude-y"]),
)
def test_any_spec_resolves_or_is_a_config_error(spec: object, default: str | None) -> None:
    try:
        resolved = resolve_model(Settings(model=default), spec)
    except ConfigError:
        return
    assert resolved.provider in registry.models.names() and resolved.id and resolved.id == resolved.id.strip()


async def test_open_model_builds_the_adapter_bound_to_the_id() -> None:
    s = Settings(anthropic_api_key=SECRET, openai_base_url="http://127.0.0.1:9/v1", model_stall_timeout=7)
    model = await open_model(s, "claude-sonnet-4-5")
    assert isinstance(model, AnthropicModel) and model.model == "claude-sonnet-4-5" and model.stall_timeout == 7
    assert SECRET not in repr(model)
    await model.aclose()
    await model.aclose()  # idempotent
    other = await open_model(s, "openai:llama3.1:8b")  # a server that needs no key
    assert isinstance(other, OpenAIModel) and other.model == "llama3.1:8b"
    await other.aclose()


@pytest.mark.parametrize(
    ("spec", "variable"), [("claude-sonnet-4-5", "ANTHROPIC_API_KEY"), ("gpt-4.1", "OPENAI_API_KEY")]
)
async def test_open_model_without_a_key_names_the_variable(spec: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        await open_model(Settings(), spec)


async def test_a_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    monkeypatch.delitem(sys.modules, "openma.adapters.models.openai", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'openma\[openai\]'"):
        await open_model(Settings(openai_api_key="k"), "gpt-4.1")


# -- third-party adapters -------------------------------------------------------------------------------


class EchoModel:
    """A third-party adapter: answers with the last user text."""

    name = "echo"

    def __init__(self, model: str) -> None:
        self.model = model
        self.closed = False

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        yield TextDelta(request.messages[-1]["content"][0]["text"])
        yield Finish("end_turn")

    async def aclose(self) -> None:
        self.closed = True


async def open_echo(settings: Settings, *, model: str) -> EchoModel:
    return EchoModel(model)


@pytest.fixture
def echo_registered() -> Iterator[None]:
    registry.models.register("echo", open_echo)
    try:
        yield
    finally:
        registry.models.unregister("echo")


async def test_a_registered_adapter_is_resolved_and_opened(echo_registered: None) -> None:
    assert "echo" in registry.models.names()
    model: Any = await open_model(Settings(), "echo:parrot-1")
    assert isinstance(model, EchoModel) and model.model == "parrot-1"
    request = ModelRequest(model="parrot-1", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert [e async for e in model.stream(request)] == [TextDelta("hi"), Finish("end_turn")]
    # it also serves bare ids when it is the default model's provider
    assert resolve_model(Settings(model="echo:parrot-1"), "parrot-2") == ModelSpec("echo", "parrot-2")


async def test_an_entry_point_adapter_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.models, "_entry_points", lambda: {"echo": f"{__name__}:open_echo"})
    model: Any = await open_model(Settings(), {"id": "parrot", "provider": "echo"})
    assert isinstance(model, EchoModel)


def test_model_registry_lists_the_builtins() -> None:
    assert {"anthropic", "openai"} <= set(registry.models.names())
    assert registry.models.group == "openma.models"
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        registry.models.load("nope")


# -- doctor ---------------------------------------------------------------------------------------------


def doctor(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, env: dict[str, str]) -> Any:
    monkeypatch.chdir(tmp_path)
    for name in ("OPENMA_MODEL", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner().invoke(main, ["doctor"], env=env)


def test_doctor_reports_the_model_without_its_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    result = doctor(monkeypatch, tmp_path, {"OPENMA_MODEL": "claude-sonnet-4-5", "ANTHROPIC_API_KEY": SECRET})
    assert result.exit_code == 0, result.output
    assert "model anthropic:claude-sonnet-4-5: ok: adapter anthropic imported; ANTHROPIC_API_KEY set" in result.output
    assert SECRET not in result.output


def test_doctor_fails_on_a_missing_model_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    result = doctor(monkeypatch, tmp_path, {"OPENMA_MODEL": "openai:gpt-4.1"})
    assert result.exit_code == 1
    assert "model openai:gpt-4.1: FAILED: [config_error]" in result.output and "OPENAI_API_KEY" in result.output


def test_doctor_without_a_default_model_is_ok(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    result = doctor(monkeypatch, tmp_path, {})
    assert result.exit_code == 0, result.output
    assert "model: ok: no default model (OPENMA_MODEL unset)" in result.output


def test_model_errors_are_openma_errors() -> None:
    from openma.errors import ModelError

    error = ModelError("x", retryable=True, status=429)
    assert isinstance(error, OpenmaError) and error.code == "model_error" and error.retryable
