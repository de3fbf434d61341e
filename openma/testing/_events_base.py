"""The shared part of the event-log contract: its environment, fixtures and helpers."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from openma.core import events as ev
from openma.errors import (
    StorageUnavailable,
)
from openma.models import Event, Session, Tenant
from openma.ports.backend import StoreBackend
from openma.ports.blobs import BlobStore
from openma.ports.sessions import SessionStore
from openma.settings import Settings
from openma.testing.stores import _StoreContractBase

AGENT = "agt_01h0000000000000000000000z"
ENVIRONMENT = "env_01h0000000000000000000000z"
MISSING_SESSION = "ses_01h0000000000000000000000z"
#: Waits in this contract end after this many seconds (a hang is a failure, not a slow pass).
WAIT = 20.0

BlobsFor = Callable[[str], BlobStore]


@attrs.define
class LogEnv:
    """One tenant's sessions store and blob store, as the contract's tests use them."""

    backend: StoreBackend
    tenant: Tenant
    store: SessionStore
    blobs: BlobStore

    async def session(self, **kwargs: Any) -> Session:
        return await self.store.create(
            agent_id=kwargs.pop("agent_id", AGENT),
            environment_id=kwargs.pop("environment_id", ENVIRONMENT),
            agent_snapshot=kwargs.pop("agent_snapshot", {"id": AGENT, "name": "coder", "version": 1}),
            environment_snapshot=kwargs.pop("environment_snapshot", {"id": ENVIRONMENT, "config": {}}),
            **kwargs,
        )

    async def blob_keys(self, session_id: str) -> list[str]:
        page = await self.blobs.list(ev.session_blob_prefix(session_id), limit=1000)
        return [b.key for b in page.items]

    async def all_events(self, session_id: str, after: int = 0) -> list[Event]:
        out: list[Event] = []
        cursor = None
        while True:
            page = await self.store.events(session_id, after=after, limit=1000, cursor=cursor)
            out += page.items
            cursor = page.next_cursor
            if cursor is None:
                return out


def forge_cursor_seq(seq: int) -> str:
    """A well-formed cursor whose position is absurd (the scope check would refuse it anyway)."""
    raw = json.dumps({"v": 1, "s": "0" * 16, "t": seq, "i": "x"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def msg(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}], **extra}


class FailingPuts:
    """A blob store whose ``put`` fails (the storage is down); everything else goes to the real store."""

    def __init__(self, inner: BlobStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put(self, key: str, data: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("blob store unreachable (injected by the contract)")


class EventLogBase(_StoreContractBase):
    """The fixtures of the event-log contract: a tenant's sessions store and blob store per test (``env``)."""

    #: The spill threshold the contract runs with (small, so spilling needs no megabyte payloads).
    spill_bytes: ClassVar[int] = 4096

    @pytest.fixture
    async def event_blobs(self, tmp_path: Path) -> AsyncIterator[BlobsFor]:
        from openma.adapters.fsspec_blobs import FsspecBlobStore

        root = await FsspecBlobStore.open(f"file://{tmp_path}/event-blobs")
        try:
            yield lambda tenant_id: root.for_tenant(tenant_id, internal=True)
        finally:
            await root.aclose()

    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        return Settings(event_spill_bytes=self.spill_bytes, sqlite_poll_interval=0.05)

    @pytest.fixture
    async def env(self, store_backend: StoreBackend, event_blobs: BlobsFor, settings: Settings) -> LogEnv:
        return await self.env_for(store_backend, event_blobs, settings)

    async def env_for(self, backend: StoreBackend, blobs_for: BlobsFor, settings: Settings, name: str = "t") -> LogEnv:
        tenant = await backend.tenants.create(name=name)
        blobs = blobs_for(tenant.id)
        store = backend.sessions(self.ref(backend, tenant.id), blobs=blobs, settings=settings)
        return LogEnv(backend, tenant, store, blobs)
