"""The value objects of the public API: frozen ``attrs`` classes, safe to share and to cache.

Timestamps are timezone-aware UTC ``datetime`` values; JSON payloads stay plain ``dict``/``list`` values.

* **Frozen** means the attributes cannot be reassigned; the ``dict``/``list`` values inside (``metadata``,
  ``data``, ``tools``, ...) are ordinary containers, so treat them as read-only.
* **Equality** is by value. **Hashing:** a model that holds such containers (``Page``, ``Tenant``, ``Agent``,
  ``AgentVersion``, ``Environment``, ``Vault``, ``Credential``, ``Session``, ``Event``, ``InboxItem``) is
  deliberately unhashable:
  ``hash()`` raises ``TypeError`` naming the class; key a ``dict`` or ``set`` by its ``id`` instead.
  ``Stream`` and ``GcReport`` hold only immutable values and are hashable.
* **JSON:** every model has ``to_dict()`` (JSON-ready: datetimes as ISO 8601 strings, nested models as
  dicts), and :func:`to_json` turns a model, a page, or a list or dict of them into a JSON string, for
  notebooks and for hosts that serve them over HTTP.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

import attrs

from openma.redact import MASK, redact_secrets

T = TypeVar("T")

#: The order of a list: oldest first (``"asc"``) or newest first (``"desc"``).
Order = Literal["asc", "desc"]


@attrs.frozen
class Place:
    """Where a sealed secret is stored (tenant, table, row, field): a ciphertext is bound to exactly this place,
    so one copied to another row, field or tenant does not decrypt."""

    tenant_id: str
    table: str
    row_id: str
    field: str


def to_dict(value: Any) -> Any:
    """``value`` as plain JSON values: an ``attrs`` model becomes a dict of its fields, recursively.

    ``datetime``/``date`` become ISO 8601 strings, ``timedelta`` seconds, ``bytes`` base64 text, tuples and
    sets lists; ``dict`` keys become strings. Anything else JSON cannot hold is a ``TypeError``.

    Secrets never come out: a field hidden from ``repr`` or marked secret in its metadata is ``"***"`` when set,
    a setting's connection URL has its password masked, and a setting's JSON options show only their keys.
    """
    if attrs.has(type(value)):
        return {f.name: _field_dict(f, getattr(value, f.name)) for f in attrs.fields(type(value))}
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): to_dict(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_dict(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _field_dict(field: attrs.Attribute[Any], value: Any) -> Any:
    if field.repr is False or field.metadata.get("secret"):
        return MASK if value else to_dict(value)
    if "setting" in field.metadata:  # a configuration value: URLs may carry passwords, options may carry keys
        if isinstance(value, str):
            return redact_secrets(value, value)
        if isinstance(value, Mapping) and "options" in str(field.metadata["setting"]):
            return {str(k): MASK for k in value}
    return to_dict(value)


def to_json(value: Any, *, indent: int | None = None) -> str:
    """``value`` (a model, a ``Page``, or a list or dict of them) as a JSON string; see :func:`to_dict`."""
    return json.dumps(to_dict(value), ensure_ascii=False, indent=indent, allow_nan=False)


class Value:
    """The base of the public models: ``to_dict()``. Subclasses are ``attrs`` frozen classes."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """This model as a dict of JSON values (datetimes as ISO 8601 strings); see :func:`to_dict`."""
        result: dict[str, Any] = to_dict(self)
        return result


@attrs.frozen(unsafe_hash=False)
class Page(Value, Generic[T]):
    """One page of a list. ``next_cursor`` is ``None`` on the last page; pass it back as ``cursor=``."""

    items: list[T]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        more = f", next_cursor={self.next_cursor!r}" if self.next_cursor else ""
        return f"Page({len(self.items)} items{more})"


@attrs.frozen(unsafe_hash=False)
class Tenant(Value):
    """A customer of the host platform; every other row belongs to exactly one tenant."""

    id: str
    name: str
    metadata: dict[str, Any]
    created_at: datetime
    archived_at: datetime | None = None


@attrs.frozen(unsafe_hash=False)
class Agent(Value):
    """An agent definition. ``version`` starts at 1 and grows by one on every effective update."""

    id: str
    tenant_id: str
    name: str
    model: str | dict[str, Any]
    system: str
    description: str
    tools: list[dict[str, Any]]
    mcp_servers: list[dict[str, Any]]
    skills: list[dict[str, Any]]
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None

    @property
    def model_id(self) -> str:
        """The model's id whether ``model`` is a plain string or ``{"id": ..., ...}``."""
        return self.model if isinstance(self.model, str) else str(self.model.get("id", ""))


@attrs.frozen(unsafe_hash=False)
class AgentVersion(Value):
    """An immutable snapshot of an agent at one version (the current one included)."""

    agent_id: str
    tenant_id: str
    version: int
    snapshot: dict[str, Any]
    created_at: datetime


@attrs.frozen(unsafe_hash=False)
class Environment(Value):
    """Where a session's tools run: sandbox provider settings, packages, network policy, ..."""

    id: str
    tenant_id: str
    name: str
    description: str
    config: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None


@attrs.frozen(unsafe_hash=False)
class Vault(Value):
    """A named group of credentials a session can be given (``vault_ids=``); holds no secret itself."""

    id: str
    tenant_id: str
    name: str
    description: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None


@attrs.frozen(unsafe_hash=False)
class Credential(Value):
    """A credential of a vault, as ``get``/``list`` return it: its secret fields are ``None``.

    ``auth`` keeps the public fields (``type``, ``hosts``, ``header``, ``mcp_server_url``, ...) and every
    secret field (``token``, ``access_token``, ``refresh_token``, ``client_secret``) set to ``None``;
    ``auth_preview`` is ``"…"`` and the last 4 characters of the token (just ``"…"`` for a token under 12
    characters). ``credentials.reveal(id)`` is the one way to read the secret.
    """

    id: str
    tenant_id: str
    vault_id: str
    display_name: str
    auth: dict[str, Any]
    auth_preview: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None


@attrs.frozen(unsafe_hash=False)
class Session(Value):
    """One conversation of an agent in an environment, with its event log.

    ``agent`` and ``environment`` are snapshots frozen at creation: later edits of the agent or environment
    do not change a running session. ``last_seq`` is the seq of the newest event (0 for an empty log) and
    ``first_seq`` the oldest seq retention kept (1 until something is pruned). ``vault_ids`` are the vaults
    whose credentials the session may use (their secrets are never copied into it).
    """

    id: str
    tenant_id: str
    agent_id: str
    environment_id: str
    title: str | None
    metadata: dict[str, Any]
    status: str
    agent: dict[str, Any]
    environment: dict[str, Any]
    last_seq: int
    first_seq: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None
    #: The vaults whose credentials this session may use (given at creation).
    vault_ids: list[str] = attrs.Factory(list)


@attrs.frozen(unsafe_hash=False)
class Event(Value):
    """One entry of a session's log. ``data`` is the whole JSON payload (with its ``id`` and ``type``)."""

    id: str
    type: str
    seq: int
    created_at: datetime
    data: dict[str, Any]


# Event's slots, set directly: ``event_from_row`` builds an Event in about half the time of its ``__init__``,
# which goes through the frozen class's guarded setattr for every field.
_EVENT_NEW = object.__new__
_EVENT_SET = tuple(getattr(Event, name).__set__ for name in ("id", "type", "seq", "created_at", "data"))


def event_from_row(event_id: str, type: str, seq: int, created_at: datetime, data: dict[str, Any]) -> Event:
    """``Event(event_id, type, seq, created_at, data)``, faster: for the read path, which builds one per row.

    Equal to the constructor's result in every way; ``Event`` has no validators or converters for it to skip
    (``tests/test_speed_codec.py`` checks both).
    """
    event: Event = _EVENT_NEW(Event)
    set_id, set_type, set_seq, set_at, set_data = _EVENT_SET
    set_id(event, event_id)
    set_type(event, type)
    set_seq(event, seq)
    set_at(event, created_at)
    set_data(event, data)
    return event


@attrs.frozen(unsafe_hash=False)
class InboxItem(Value):
    """An input posted to a session, waiting for (or done with) promotion into its log.

    ``state`` is ``pending``, ``promoted`` (``seq`` is then its place in the log) or ``cancelled``;
    ``position`` orders the inbox first in, first out.
    """

    event_id: str
    type: str
    position: int
    state: str
    data: dict[str, Any]
    seq: int | None
    created_at: datetime
    updated_at: datetime


@attrs.frozen
class Stream(Value):
    """One model call's streamed output: ``open`` until finalized ``completed``, ``aborted`` or ``interrupted``.

    ``text`` is every chunk appended so far, joined; ``chunks`` counts them.
    """

    id: str
    session_id: str
    kind: str
    status: str
    message_id: str | None
    text: str
    chunks: int
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None


@attrs.frozen
class GcReport(Value):
    """What one ``gc`` pass removed."""

    events: int = 0
    inbox: int = 0
    streams: int = 0
    sessions: int = 0
    blobs: int = 0
    #: Blobs of the tenant whose TTL had run out (snapshots, TTL'd tenant blobs), swept in the same pass.
    expired_blobs: int = 0
