"""The configuration of the model adapters (``anthropic``, ``openai``) and of the default model."""

from __future__ import annotations

from typing import Any

import attrs

from openma._validators import number_in, string
from openma.config._field import setting


def _optional_str(name: str, env: str, doc: str, *, shown: str | None = None, secret: bool = False) -> Any:
    return setting(name, env, doc, default=None, validator=string(optional=True), shown=shown, secret=secret)


@attrs.frozen
class ModelConfig:
    """The default model and each model provider's credentials (``pip install 'openma[anthropic]'`` /
    ``'openma[openai]'``). Keys are masked in every ``repr`` and never appear in an error.

    :func:`openma.adapters.models.open_model` resolves an agent's ``model`` through these settings.
    """

    default: str | None = _optional_str(
        "model",
        "OPENMA_MODEL",
        "The default model: `provider:model-id` (`anthropic:claude-sonnet-4-5`, `openai:gpt-4.1`) or a bare id. "
        "Its provider is used for an agent's bare model id that names no known family.",
        shown="unset",
    )
    stall_timeout: float = setting(
        "model_stall_timeout",
        "OPENMA_MODEL_STALL_TIMEOUT",
        "Seconds a model's stream may go without a chunk (or its response headers) before the call fails as a "
        "retryable stalled stream.",
        default=60.0,
        validator=number_in(0, 86_400.0, above=True),
        kind="float",
    )
    anthropic_api_key: str | None = _optional_str(
        "anthropic_api_key",
        "ANTHROPIC_API_KEY",
        "Anthropic API key (required for the `anthropic` adapter). Never printed.",
        secret=True,
    )
    anthropic_base_url: str | None = _optional_str(
        "anthropic_base_url",
        "ANTHROPIC_BASE_URL",
        "Anthropic API URL override (a gateway or a proxy).",
        shown="`https://api.anthropic.com` (the SDK's)",
    )
    openai_api_key: str | None = _optional_str(
        "openai_api_key",
        "OPENAI_API_KEY",
        "OpenAI API key (required for the `openai` adapter unless `OPENAI_BASE_URL` names a server that needs "
        "none). Never printed.",
        secret=True,
    )
    openai_base_url: str | None = _optional_str(
        "openai_base_url",
        "OPENAI_BASE_URL",
        "URL of an OpenAI-compatible server (vLLM, Ollama, LiteLLM: `http://localhost:11434/v1`).",
        shown="`https://api.openai.com/v1` (the SDK's)",
    )
