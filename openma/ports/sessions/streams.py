"""The ``Streams`` port: one row per model call, for crash recovery of half-written messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from openma.models import Page, Stream


class Streams(Protocol):
    """A session's model streams.

    ``open_stream``, ``append_stream`` (one write per batch of chunks), ``finalize_stream`` as ``completed``,
    ``aborted`` or ``interrupted`` (idempotent for the same status); ``streams`` pages them (``open`` ones
    for crash recovery, with their text).
    """

    async def open_stream(
        self,
        session_id: str,
        *,
        stream_id: str | None = None,
        message_id: str | None = None,
        kind: str = "message",
        fence: int | None = None,
    ) -> Stream: ...

    async def append_stream(
        self, session_id: str, stream_id: str, chunks: Sequence[str], *, fence: int | None = None
    ) -> int:
        """Append a batch of chunks in one write; return the stream's chunk count."""
        ...

    async def finalize_stream(
        self, session_id: str, stream_id: str, status: str, *, error: str | None = None, fence: int | None = None
    ) -> Stream: ...

    async def get_stream(self, session_id: str, stream_id: str) -> Stream: ...

    async def streams(
        self, session_id: str, *, status: str | None = "open", limit: int = 100, cursor: str | None = None
    ) -> Page[Stream]: ...
