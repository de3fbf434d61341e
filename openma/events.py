"""Typed events: the session event catalogue (the Managed Agents types and fields) as attrs classes.

The log stores each event as a JSON object (``Event.data``); these classes are the typed view of it, for
hosts that render a session and for code that writes events:

    from openma import events
    typed = events.from_dict(event.data)          # an events.AgentMessage, events.AgentToolUse, ...
    if isinstance(typed, events.AgentToolUse):
        print(typed.name, typed.input)
    await t.sessions.post(sid, [events.UserMessage(content=[events.text("hi")]).to_dict()])

Every class validates on construction (a wrong type is :class:`~openma.errors.InvalidInput` naming the
field), ``to_dict()`` gives the stored form, and :func:`from_dict` reads one back. Fields a class does not
name (a newer writer's, or an adapter's own) are kept in ``extra`` and written back by ``to_dict()``, so a
round trip loses nothing; a type this module does not know comes back as :class:`UnknownEvent`.
``docs/events.md`` documents the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal, TypeVar

import attrs

from openma.errors import InvalidInput

_C = TypeVar("_C", bound="BaseEvent")
_REGISTRY: dict[str, type[BaseEvent]] = {}


Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _check(kind: type | tuple[type, ...], *, optional: bool = False) -> Validator:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise InvalidInput(f"{attribute.name} must not be a boolean", field=attribute.name)
        if not isinstance(value, kind):
            raise InvalidInput(f"{attribute.name} has the wrong type ({type(value).__name__})", field=attribute.name)

    return validate


def _choice(*values: str, optional: bool = False) -> Validator:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if value not in values:
            raise InvalidInput(f"{attribute.name} must be one of {', '.join(values)}", field=attribute.name)

    return validate


def _blocks(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(b, Mapping) and isinstance(b.get("type"), str) for b in value):
        raise InvalidInput(f"{attribute.name} must be a list of content blocks with a type", field=attribute.name)


def _content(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        _blocks(_, attribute, value)


def text(value: str) -> dict[str, Any]:
    """A text content block."""
    return {"type": "text", "text": value}


def _register(kind: str) -> Callable[[type[_C]], type[_C]]:
    def wrap(cls: type[_C]) -> type[_C]:
        cls.TYPE = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def _opt(kind: type | tuple[type, ...]) -> Any:
    return attrs.field(default=None, validator=_check(kind, optional=True), kw_only=True)


@attrs.frozen(kw_only=True)
class BaseEvent:
    """Fields every event has: its ``id`` (minted by the log when not given) and what a class leaves to
    ``extra``."""

    TYPE: ClassVar[str] = ""
    id: str | None = _opt(str)
    extra: dict[str, Any] = attrs.field(factory=dict, kw_only=True, validator=_check(dict))

    @property
    def type(self) -> str:
        return self.TYPE

    def to_dict(self) -> dict[str, Any]:
        """The stored form: ``type``, the set fields (``None`` ones left out) and ``extra``."""
        out: dict[str, Any] = {"type": self.type}
        for field in attrs.fields(type(self)):
            if field.name == "extra":
                continue
            value = getattr(self, field.name)
            if value is not None:
                out[field.name] = value
        return {**self.extra, **out}


@attrs.frozen(kw_only=True)
class UnknownEvent(BaseEvent):
    """An event of a type this module does not name; ``data`` is its stored form."""

    data: dict[str, Any] = attrs.field(factory=dict)

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


# -- user inputs


@_register("user.message")
@attrs.frozen(kw_only=True)
class UserMessage(BaseEvent):
    content: list[dict[str, Any]] = attrs.field(validator=_blocks)


@_register("user.interrupt")
@attrs.frozen(kw_only=True)
class UserInterrupt(BaseEvent):
    pass


@_register("user.tool_confirmation")
@attrs.frozen(kw_only=True)
class UserToolConfirmation(BaseEvent):
    tool_use_id: str = attrs.field(validator=_check(str))
    result: Literal["allow", "deny"] = attrs.field(validator=_choice("allow", "deny"))
    deny_message: str | None = _opt(str)


@_register("user.custom_tool_result")
@attrs.frozen(kw_only=True)
class UserCustomToolResult(BaseEvent):
    custom_tool_use_id: str = attrs.field(validator=_check(str))
    content: str | list[dict[str, Any]] = attrs.field(validator=_content)
    is_error: bool | None = _opt(bool)


# -- the agent


@_register("agent.message")
@attrs.frozen(kw_only=True)
class AgentMessage(BaseEvent):
    content: list[dict[str, Any]] = attrs.field(validator=_blocks)
    message_id: str | None = _opt(str)
    #: Set when an interrupt or a crash cut the answer short: ``content`` is what was streamed.
    interrupted: bool | None = _opt(bool)


@_register("agent.thinking")
@attrs.frozen(kw_only=True)
class AgentThinking(BaseEvent):
    text: str = attrs.field(validator=_check(str))
    signature: str | None = _opt(str)


@_register("agent.tool_use")
@attrs.frozen(kw_only=True)
class AgentToolUse(BaseEvent):
    name: str = attrs.field(validator=_check(str))
    input: dict[str, Any] = attrs.field(validator=_check(dict))
    evaluated_permission: Literal["allow", "ask"] | None = attrs.field(
        default=None, validator=_choice("allow", "ask", optional=True), kw_only=True
    )
    provider_id: str | None = _opt(str)


@_register("agent.tool_result")
@attrs.frozen(kw_only=True)
class AgentToolResult(BaseEvent):
    tool_use_id: str = attrs.field(validator=_check(str))
    content: str | list[dict[str, Any]] = attrs.field(validator=_content)
    is_error: bool | None = _opt(bool)
    truncated: bool | None = _opt(bool)


@_register("agent.custom_tool_use")
@attrs.frozen(kw_only=True)
class AgentCustomToolUse(BaseEvent):
    name: str = attrs.field(validator=_check(str))
    input: dict[str, Any] = attrs.field(validator=_check(dict))
    provider_id: str | None = _opt(str)


@_register("agent.mcp_tool_use")
@attrs.frozen(kw_only=True)
class AgentMcpToolUse(BaseEvent):
    mcp_server_name: str = attrs.field(validator=_check(str))
    name: str = attrs.field(validator=_check(str))
    input: dict[str, Any] = attrs.field(validator=_check(dict))


@_register("agent.mcp_tool_result")
@attrs.frozen(kw_only=True)
class AgentMcpToolResult(BaseEvent):
    mcp_tool_use_id: str = attrs.field(validator=_check(str))
    content: str | list[dict[str, Any]] = attrs.field(validator=_content)
    is_error: bool | None = _opt(bool)


@_register("agent.thread_context_compacted")
@attrs.frozen(kw_only=True)
class AgentThreadContextCompacted(BaseEvent):
    original_message_count: int = attrs.field(validator=_check(int))
    compacted_message_count: int = attrs.field(validator=_check(int))
    summary: list[dict[str, Any]] = attrs.field(validator=_blocks)
    replaced_range: dict[str, int] = attrs.field(validator=_check(dict))
    trigger: Literal["auto", "manual"] = attrs.field(default="auto", validator=_choice("auto", "manual"))
    pre_tokens: int | None = _opt(int)


# -- the session


@_register("session.status_running")
@attrs.frozen(kw_only=True)
class SessionStatusRunning(BaseEvent):
    pass


@_register("session.status_idle")
@attrs.frozen(kw_only=True)
class SessionStatusIdle(BaseEvent):
    #: ``{"type": end_turn | requires_action | interrupted | error | max_steps, "event_ids"?: [...]}``.
    stop_reason: dict[str, Any] | None = _opt(dict)  # noqa: RUF009 (an attrs field)


@_register("session.status_rescheduled")
@attrs.frozen(kw_only=True)
class SessionStatusRescheduled(BaseEvent):
    reason: str | None = _opt(str)


@_register("session.status_terminated")
@attrs.frozen(kw_only=True)
class SessionStatusTerminated(BaseEvent):
    reason: str | None = _opt(str)


@_register("session.error")
@attrs.frozen(kw_only=True)
class SessionError(BaseEvent):
    #: ``{"type", "message", "retry_status": non_retryable | retries_exhausted}`` (or a plain string).
    error: str | dict[str, Any] = attrs.field(validator=_check((str, dict)))
    message: str | None = _opt(str)


@_register("session.warning")
@attrs.frozen(kw_only=True)
class SessionWarning(BaseEvent):
    source: str = attrs.field(validator=_check(str))
    message: str = attrs.field(validator=_check(str))
    details: dict[str, Any] = attrs.field(factory=dict, validator=_check(dict))


# -- spans


@_register("span.model_request_start")
@attrs.frozen(kw_only=True)
class SpanModelRequestStart(BaseEvent):
    model: str = attrs.field(validator=_check(str))


@_register("span.model_request_end")
@attrs.frozen(kw_only=True)
class SpanModelRequestEnd(BaseEvent):
    model: str = attrs.field(validator=_check(str))
    model_request_start_id: str = attrs.field(validator=_check(str))
    #: ``{input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens}``.
    model_usage: dict[str, int] | None = _opt(dict)  # noqa: RUF009 (an attrs field)
    finish_reason: str | None = _opt(str)
    final_text_length: int | None = _opt(int)
    is_error: bool | None = _opt(bool)
    error_message: str | None = _opt(str)


#: Every event type this module names.
EVENT_TYPES: Final = tuple(sorted(_REGISTRY))


def from_dict(data: Mapping[str, Any]) -> BaseEvent:
    """The typed event for a stored payload (``InvalidInput`` when a named field has the wrong type)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
        raise InvalidInput("an event is an object with a string 'type'", field="type")
    cls = _REGISTRY.get(data["type"])
    if cls is None:
        return UnknownEvent(id=data.get("id") if isinstance(data.get("id"), str) else None, data=dict(data))
    names = {f.name for f in attrs.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names and k != "type"}
    try:
        return cls(**known, extra=extra)
    except TypeError as exc:  # a required field is missing
        raise InvalidInput(f"{data['type']}: {exc}", field="type") from None


__all__ = [
    "EVENT_TYPES",
    "AgentCustomToolUse",
    "AgentMcpToolResult",
    "AgentMcpToolUse",
    "AgentMessage",
    "AgentThinking",
    "AgentThreadContextCompacted",
    "AgentToolResult",
    "AgentToolUse",
    "BaseEvent",
    "SessionError",
    "SessionStatusIdle",
    "SessionStatusRescheduled",
    "SessionStatusRunning",
    "SessionStatusTerminated",
    "SessionWarning",
    "SpanModelRequestEnd",
    "SpanModelRequestStart",
    "UnknownEvent",
    "UserCustomToolResult",
    "UserInterrupt",
    "UserMessage",
    "UserToolConfirmation",
    "from_dict",
    "text",
]
