"""Model adapters and the resolution of an agent's ``model`` into one.

An agent's ``model`` is a string or a dict:

* ``"provider:model-id"`` (``"anthropic:claude-sonnet-4-5"``, ``"openai:gpt-4.1"``, ``"openai:llama3.1:8b"``)
  names the adapter: everything before the first ``:`` when it is a registered model adapter's name.
* A bare id (``"claude-sonnet-4-5"``, ``"gpt-4.1"``) goes to the adapter of its well-known family
  (``claude-*`` → ``anthropic``; ``gpt-*``, ``o1``/``o3``/``o4``-*, ``chatgpt-*`` → ``openai``), else to the
  provider of the default model (``OPENMA_MODEL``).
* ``{"id": ..., "provider": ...?, **options}``: the same, with the provider given apart; the other keys
  (``speed``, ``temperature``, ...) are the call's provider options (:attr:`ModelSpec.options`).
* ``None`` (an agent without a model) is the default model, ``OPENMA_MODEL``.

:func:`resolve_model` turns a spec into a :class:`ModelSpec` without importing anything; :func:`open_model`
opens the adapter through :data:`openma.registry.models` (built-ins ``anthropic`` and ``openai``, third
parties through the ``openma.models`` entry-point group). Anything that cannot be resolved is a
:class:`~openma.errors.ConfigError` that says what is valid.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from openma import registry
from openma.errors import ConfigError
from openma.ports.model import Model

if TYPE_CHECKING:
    from openma.adapters.models.anthropic import AnthropicModel
    from openma.adapters.models.openai import OpenAIModel
    from openma.settings import Settings

    def _conforms(a: AnthropicModel, o: OpenAIModel) -> tuple[Model, Model]:
        return a, o  # the type checker proves both adapters satisfy the port


__all__ = ["ModelSpec", "open_model", "open_resolved", "resolve_model"]

#: Bare model ids whose family names their provider.
_FAMILIES: Final = (
    (re.compile(r"claude[-.]"), "anthropic"),
    (re.compile(r"(gpt-|chatgpt-|o[1-9](-|$))"), "openai"),
)
_MAX_ID: Final = 256


@attrs.frozen
class ModelSpec:
    """A resolved model: the adapter's registered ``provider`` name, the provider's model ``id`` (what a
    :class:`~openma.ports.model.ModelRequest` carries as ``model``) and the provider ``options`` the spec
    gave (for :attr:`~openma.ports.model.ModelRequest.options`)."""

    provider: str
    id: str
    options: Mapping[str, Any] = attrs.field(factory=dict)

    def __str__(self) -> str:
        return f"{self.provider}:{self.id}"


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_ID or value != value.strip():
        raise ConfigError(
            f"{what} must be a non-empty model id of at most {_MAX_ID} characters without surrounding spaces, "
            f"got {value!r:.80}",
            field="model",
        )
    return value


def _split(text: str, what: str) -> tuple[str | None, str]:
    """``(provider or None, id)`` of ``"provider:id"`` or a bare id."""
    text = _check_id(text, what)
    head, sep, tail = text.partition(":")
    if sep and registry.models.has(head):
        return head, _check_id(tail, what)
    return None, text


def _family(model_id: str) -> str | None:
    for pattern, provider in _FAMILIES:
        if pattern.match(model_id.lower()):
            return provider
    return None


def resolve_model(settings: Settings, spec: object = None) -> ModelSpec:
    """The :class:`ModelSpec` an agent's ``model`` (``spec``) names, resolved through ``settings`` (see the
    module docstring). Imports nothing; an unknown provider or an unusable spec is a ``ConfigError``."""
    default: str | None = settings.models.default
    options: dict[str, Any] = {}
    if spec is None:
        if default is None:
            raise ConfigError("no model given and no default model set; set OPENMA_MODEL", field="model")
        provider, model_id = _split(default, "OPENMA_MODEL")
    elif isinstance(spec, str):
        provider, model_id = _split(spec, "the agent's model")
    elif isinstance(spec, Mapping):
        if "id" not in spec:
            raise ConfigError("a model given as an object needs an 'id'", field="model")
        options = {k: v for k, v in spec.items() if k not in ("id", "provider")}
        if not all(isinstance(k, str) for k in options):
            raise ConfigError("a model object's keys must be strings", field="model")
        given = spec.get("provider")
        if given is None:
            provider, model_id = _split(spec["id"], "the agent's model id")
        else:
            if not isinstance(given, str) or not registry.models.has(given):
                raise ConfigError(
                    f"unknown model provider {given!r}; valid choices: {', '.join(registry.models.names())}",
                    field="model",
                    choices=registry.models.names(),
                )
            provider, model_id = given, _check_id(spec["id"], "the agent's model id")
    else:
        raise ConfigError(
            f"a model is a string such as 'claude-sonnet-4-5' or an object with an 'id', got {type(spec).__name__}",
            field="model",
        )
    if provider is None:
        provider = _family(model_id)
    if provider is None and default is not None:
        provider = _split(default, "OPENMA_MODEL")[0] or _family(default)
    if provider is None:
        names = registry.models.names()
        raise ConfigError(
            f"cannot tell which model provider serves {model_id!r}; write it as 'provider:{model_id}' "
            f"(providers: {', '.join(names)}) or set OPENMA_MODEL to a model of the provider to use",
            field="model",
            choices=names,
        )
    if not registry.models.has(provider):  # a family whose adapter was unregistered
        raise ConfigError(f"unknown model provider {provider!r}", field="model", choices=registry.models.names())
    return ModelSpec(provider, model_id, options)


async def open_model(settings: Settings, spec: object = None) -> Model:
    """Open the adapter for ``spec`` (an agent's ``model``; ``None`` for ``OPENMA_MODEL``).

    The adapter is bound to the resolved model id (a request whose ``model`` is ``""`` uses it). Call its
    ``aclose()`` when done. A missing extra or key is a ``ConfigError`` that names what to install or set.
    """
    return await open_resolved(settings, resolve_model(settings, spec))


async def open_resolved(settings: Settings, resolved: ModelSpec) -> Model:
    """Open the adapter for a spec :func:`resolve_model` already resolved (see :func:`open_model`)."""
    factory = registry.models.load(resolved.provider)
    model: Any = factory(settings, model=resolved.id)
    if inspect.isawaitable(model):
        model = await model
    return model  # type: ignore[no-any-return]
