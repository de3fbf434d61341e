"""The usage ledger, bound to one tenant: what a tenant's sessions consumed, in idempotent slices.

A **slice** is one measured amount of one kind of usage, with a deterministic ``key``:

* ``kind="model"``: tokens of one model call (``name`` is the model; the four token counts), keyed by the
  ``span.model_request_end`` event it was read from (``model:<event id>``);
* ``kind="sandbox"``: seconds a session's sandbox was alive (``name`` is the provider), keyed by the sandbox
  and the start of the measured period (``sandbox:<sandbox id>:<start ms>``);
* ``kind="exec"``: seconds commands ran in that sandbox over the same period (``exec:<sandbox id>:<start ms>``);
* ``kind="session"``: seconds a session was running a turn, from its ``session.status_running`` event to the
  ``session.status_idle`` that ended it, keyed by the former (``session:<event id>``).

Contract:

* ``record(slices)`` writes every slice whose key the tenant's ledger does not hold yet and ignores the
  others, in one write unit: a retried or repeated write never counts twice, and any sequence of writes of
  the same slices leaves the same totals. It returns how many slices were new. A slice that is not
  well-formed (an unknown kind, a negative or non-integer amount, a key or name that is empty, too long, or
  holds NUL or a lone surrogate, ``at`` without a time zone) is ``InvalidInput`` and nothing of the call is
  written. Two slices with the same key in one call count once (the first one).
* ``summary(since=, until=, session_id=)`` sums the slices whose ``at`` is in ``[since, until)`` (each bound
  optional, timezone-aware), optionally of one session, per ``(kind, name)``.
* ``export(cursor=, limit=, consumer=)`` pages through the slices in the order they were recorded, for a
  billing exporter: ``cursor=None`` resumes after what ``consumer`` last acknowledged (``ack``), a cursor from
  an earlier page continues after that page. The page's ``cursor`` is never ``None`` (poll with it: a slice
  recorded later shows up after it). Delivery is **at least once**: an exporter that crashed between sending
  a page and acknowledging it sends the page again, so the receiving side dedupes on ``key``.
* ``ack(cursor, consumer=)`` remembers that ``consumer`` has everything up to ``cursor``; it never moves
  back (acknowledging an older cursor is a no-op). A cursor of another tenant, or one that does not decode,
  is ``InvalidInput``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final, Literal, Protocol, TypeAlias

import attrs

UsageKind: TypeAlias = Literal["model", "sandbox", "exec", "session"]
USAGE_KINDS: Final[tuple[str, ...]] = ("model", "sandbox", "exec", "session")


@attrs.frozen
class UsageSlice:
    """One measured amount of usage of one session (see the module docstring for the kinds and keys)."""

    key: str
    session_id: str
    kind: UsageKind
    at: datetime
    name: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    duration_ms: int = 0

    @property
    def seconds(self) -> float:
        return self.duration_ms / 1000


@attrs.frozen
class UsageTotal:
    """The sum of the slices of one ``(kind, name)``; ``slices`` is how many were summed."""

    kind: UsageKind
    name: str
    slices: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    duration_ms: int = 0

    @property
    def seconds(self) -> float:
        return self.duration_ms / 1000

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


@attrs.frozen
class UsageSummary:
    """Totals per ``(kind, name)``, ordered by kind then name, over the window that was asked for."""

    totals: list[UsageTotal]
    since: datetime | None = None
    until: datetime | None = None
    session_id: str | None = None

    def of(self, kind: str, name: str | None = None) -> UsageTotal:
        """The total of ``kind`` (and ``name``, when given; else every name of the kind summed)."""
        picked = [t for t in self.totals if t.kind == kind and (name is None or t.name == name)]
        return UsageTotal(
            kind=kind,  # type: ignore[arg-type]
            name=name or "",
            slices=sum(t.slices for t in picked),
            input_tokens=sum(t.input_tokens for t in picked),
            output_tokens=sum(t.output_tokens for t in picked),
            cache_read_tokens=sum(t.cache_read_tokens for t in picked),
            cache_write_tokens=sum(t.cache_write_tokens for t in picked),
            duration_ms=sum(t.duration_ms for t in picked),
        )


@attrs.frozen
class ExportedSlice:
    """A slice as the export sees it: with the time it was recorded."""

    slice: UsageSlice
    recorded_at: datetime


@attrs.frozen
class UsageExport:
    """One page of the export: the slices, a cursor after them (never ``None``), and whether more wait."""

    items: list[ExportedSlice]
    cursor: str
    has_more: bool = False


class UsageStore(Protocol):
    """A tenant's usage ledger (see the module docstring for the contract)."""

    tenant_id: str

    async def record(self, slices: Sequence[UsageSlice]) -> int: ...

    async def summary(
        self, *, since: datetime | None = None, until: datetime | None = None, session_id: str | None = None
    ) -> UsageSummary: ...

    async def export(
        self, *, cursor: str | None = None, limit: int = 100, consumer: str = "default"
    ) -> UsageExport: ...

    async def ack(self, cursor: str, *, consumer: str = "default") -> None: ...
