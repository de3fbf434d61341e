"""The Telemetry port: structured, fire-and-forget operational events.

Kinds (``kind``) in use: ``session.lifecycle``, ``recovery``, ``tool.call``, ``sandbox.exec``,
``sandbox.lifecycle``, ``silent_catch`` (an exception that was caught and not surfaced),
``integration.dispatch``.

Contract for a sink:

* ``emit`` never raises and never blocks the caller on I/O (buffer, or hand off to a thread or a logger).
* Fields are JSON-compatible scalars, lists and dicts. Callers never pass secret values; sinks also mask
  any field whose name looks secret (see :func:`openma.adapters.telemetry.redact`), as a second line.
"""

from __future__ import annotations

from typing import Any, Protocol


class Telemetry(Protocol):
    """A sink for operational events: ``emit`` never raises and never blocks the caller on I/O."""

    def emit(self, kind: str, **fields: Any) -> None:
        """Record one event of ``kind`` with ``fields``."""
        ...


class NullTelemetry:
    """Drops every event: the default where no sink was given."""

    def emit(self, kind: str, **fields: Any) -> None:
        return None

    def __repr__(self) -> str:
        return "NullTelemetry()"
