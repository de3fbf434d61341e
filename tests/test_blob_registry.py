"""Blob stores through the registry: a third-party store that passes the contract plugs in by the scheme of
``blob_url``, and the platform's tenant views, spills and snapshots work on it through the port alone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
import attrs
import pytest

from openma import (
    BlobInfo,
    BlobReader,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    Page,
    Platform,
    Settings,
    registry,
)
from openma.core import keys
from openma.core.tenant_blobs import PrefixedBlobs, tenant_view
from openma.ports.blobs import DEFAULT_CHUNK_SIZE, DEFAULT_CONTENT_TYPE, TTL, BlobData, BlobStore
from openma.testing import BlobStoreContract

pytestmark = pytest.mark.anyio

TENANT = "tnt_01m8000000000000000000000a"


@attrs.frozen
class _Object:
    data: bytes
    info: BlobInfo

    def live(self, now: datetime) -> bool:
        return self.info.expires_at is None or self.info.expires_at > now


class _DictReader:
    def __init__(self, obj: _Object, offset: int, length: int | None, chunk_size: int) -> None:
        self.info = obj.info
        end = len(obj.data) if length is None else min(len(obj.data), offset + length)
        self._data = obj.data[offset:end]  # bytes are immutable: a later put never tears this read
        self._chunk_size = chunk_size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read(self._chunk_size):
            yield chunk

    async def read(self, n: int = -1) -> bytes:
        n = len(self._data) if n < 0 else n
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk


def _int(value: object, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{what} must be an integer >= {minimum}", field=what)
    return value


class DictBlobStore:
    """A blob store in a dict, as a third party would write one: the port, nothing else (no ``for_tenant``)."""

    def __init__(self, name: str = "dict") -> None:
        self.name = name
        self.objects: dict[str, _Object] = {}
        self.set_up = False
        self.closed = False

    async def setup(self) -> None:
        self.set_up = True

    async def aclose(self) -> None:
        self.closed = True

    async def put(
        self,
        key: str,
        data: BlobData,
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        ttl: TTL | None = None,
        if_none_match: Literal["*"] | None = None,
        if_match: str | None = None,
    ) -> BlobInfo:
        key = keys.blob_key(key)
        ctype = keys.content_type(content_type, DEFAULT_CONTENT_TYPE)
        meta = keys.blob_metadata(metadata)
        ttl_ms = keys.ttl_ms(ttl)
        if if_none_match not in (None, "*"):
            raise InvalidInput("if_none_match must be '*' or None", field="if_none_match")
        if if_match is not None and (not isinstance(if_match, str) or not if_match.strip('"')):
            raise InvalidInput("if_match must be an etag", field="if_match")
        if if_none_match and if_match is not None:
            raise InvalidInput("pass if_none_match or if_match, not both", field="if_match")
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
        elif hasattr(data, "__aiter__"):
            parts = []
            async for chunk in data:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise InvalidInput("chunks must be bytes", field="data")
                parts.append(bytes(chunk))
            body = b"".join(parts)
        else:
            raise InvalidInput("data must be bytes or an async iterable of bytes", field="data")
        now = datetime.now(UTC)
        current = self.objects.get(key)  # no await from here on: the check and the write are one step
        live = current if current is not None and current.live(now) else None
        if if_none_match and live is not None:
            raise Conflict(f"blob {key!r} exists", key=key)
        if if_match is not None and (live is None or live.info.etag != if_match.strip('"')):
            raise Conflict(f"blob {key!r} does not have etag {if_match!r}", key=key)
        expires = None if ttl_ms is None else now + timedelta(milliseconds=ttl_ms)
        info = BlobInfo(key, len(body), uuid.uuid4().hex, ctype, meta, now, expires)
        self.objects[key] = _Object(body, info)
        return info

    def _live(self, key: object) -> _Object:
        key = keys.blob_key(key)
        obj = self.objects.get(key)
        if obj is None or not obj.live(datetime.now(UTC)):
            raise NotFound(f"blob {key!r} not found", key=key)
        return obj

    async def get(self, key: str) -> bytes:
        return self._live(key).data

    async def get_range(self, key: str, offset: int, length: int | None = None) -> bytes:
        keys.blob_key(key)
        offset = _int(offset, "offset")
        end = None if length is None else offset + _int(length, "length")
        return self._live(key).data[offset:end]

    @asynccontextmanager
    async def open_read(
        self, key: str, *, offset: int = 0, length: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[BlobReader]:
        keys.blob_key(key)
        _int(offset, "offset")
        _int(chunk_size, "chunk_size", minimum=1)
        yield _DictReader(self._live(key), offset, None if length is None else _int(length, "length"), chunk_size)

    async def head(self, key: str) -> BlobInfo:
        return self._live(key).info

    async def delete(self, key: str) -> None:
        self.objects.pop(keys.blob_key(key), None)

    async def list(self, prefix: str = "", *, cursor: str | None = None, limit: int = 100) -> Page[BlobInfo]:
        prefix = keys.blob_prefix(prefix)
        limit = _int(limit, "limit", minimum=1)
        if limit > 1000:
            raise InvalidInput("limit must be at most 1000", field="limit")
        scope = f"{self.name}:{id(self)}:{prefix}"
        after = keys.decode_key_cursor(cursor, scope) if cursor is not None else None
        now = datetime.now(UTC)
        found = sorted(
            k for k, o in self.objects.items() if k.startswith(prefix) and o.live(now) and (after is None or k > after)
        )
        page = found[:limit]
        more = len(found) > limit
        return Page([self.objects[k].info for k in page], keys.encode_key_cursor(scope, page[-1]) if more else None)

    async def sweep_expired(self) -> int:
        now = datetime.now(UTC)
        expired = [k for k, o in self.objects.items() if not o.live(now)]
        for k in expired:
            del self.objects[k]
        return len(expired)

    async def expire(self, prefix: str, older_than: datetime) -> int:
        prefix = keys.blob_prefix(prefix)
        if not isinstance(older_than, datetime) or older_than.tzinfo is None:
            raise InvalidInput("older_than must be a timezone-aware datetime", field="older_than")
        old = [k for k, o in self.objects.items() if k.startswith(prefix) and o.info.created_at < older_than]
        for k in old:
            del self.objects[k]
        return len(old)


class TestDictBlobStore(BlobStoreContract):
    """The third-party store itself passes the contract."""

    capabilities = {"concurrent_writers", "nested_keys"}
    large_object_size = 2 << 20

    @pytest.fixture
    async def blob_store(self) -> BlobStore:
        return DictBlobStore()


class TestTenantViewOfAnyStore(BlobStoreContract):
    """openma's tenant view over a store with no ``for_tenant`` of its own passes the contract too."""

    capabilities = {"concurrent_writers", "nested_keys"}
    large_object_size = 2 << 20

    @pytest.fixture
    async def blob_store(self) -> BlobStore:
        return tenant_view(DictBlobStore(), TENANT)


#: The stores the platform opened through the registry, by URL, so a test can look inside.
OPENED: dict[str, DictBlobStore] = {}


async def open_dict_store(settings: Settings) -> DictBlobStore:
    store = OPENED[settings.blob_url] = DictBlobStore()
    return store


@pytest.fixture
def dict_registered() -> Any:
    registry.blob_stores.register("dict", open_dict_store)
    try:
        yield
    finally:
        registry.blob_stores.unregister("dict")
        OPENED.clear()


def test_a_blob_store_is_chosen_by_the_scheme_of_its_url(dict_registered: None) -> None:
    assert registry.blob_store_name("dict://anything") == "dict"
    assert registry.blob_store_name("DICT://anything") == "dict"
    assert registry.blob_store_name("file://./blobs") == "file"
    assert registry.blob_store_name("memory://x") == "memory"
    assert registry.blob_store_name("s3://bucket") == "s3"
    assert registry.blob_store_name("gcs://bucket") == registry.DEFAULT_BLOB_STORE == "fsspec"
    assert {"dict", "file", "fsspec", "memory", "s3"} <= set(registry.blob_stores.names())
    assert registry.blob_stores.group == "openma.blob_stores"
    for bad in (None, 5, "no-scheme"):
        with pytest.raises(ConfigError, match="blob_url"):
            registry.blob_store_name(bad)
    from openma.adapters.fsspec_blobs import open_blob_store

    for name in ("fsspec", "file", "memory", "local"):
        assert registry.blob_stores.load(name) is open_blob_store


async def test_a_third_party_store_holds_spilled_events_and_tenant_blobs(tmp_path: Path, dict_registered: None) -> None:
    settings = Settings(sqlite_path=str(tmp_path / "p.db"), blob_url="dict://test", event_spill_bytes=500)
    async with Platform.open(settings) as oma:
        store = OPENED["dict://test"]
        assert oma.blobs is store and store.set_up
        t = oma.tenant(await oma.tenants.create(name="acme"))
        agent = await t.agents.create(name="coder", model="m")
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id)
        body = {"type": "user.message", "content": [{"type": "text", "text": "x" * 2_000}]}
        [event] = await t.sessions.unfenced_append(session.id, [body])
        spilled = [k for k in store.objects if k.startswith(f"t/{t.tenant_id}/.openma/sessions/{session.id}/")]
        assert len(spilled) == 1, sorted(store.objects)
        [read] = (await t.sessions.events(session.id, after=0)).items
        assert read.data["content"] == body["content"] and read.seq == event.seq

        await t.blobs.put("notes/mine.txt", b"the tenant's own")
        assert [i.key for i in (await t.blobs.list()).items] == ["notes/mine.txt"]  # the spill stays hidden
        assert f"t/{t.tenant_id}/notes/mine.txt" in store.objects
        inner = spilled[0][len(f"t/{t.tenant_id}/") :]
        for call in (t.blobs.get(inner), t.blobs.delete(inner), t.blobs.put(inner, b"overwritten")):
            with pytest.raises(InvalidInput):
                await call
        other = oma.tenant(await oma.tenants.create(name="other"))
        assert (await other.blobs.list()).items == []
        with pytest.raises(NotFound):
            await other.blobs.get("notes/mine.txt")
        with pytest.raises(NotFound):  # an unknown tenant leaves no object behind
            await oma.tenant("tnt_01m8000000000000000000000z").blobs.put("k", b"x")
        assert not any(k.startswith("t/tnt_01m8000000000000000000000z/") for k in store.objects)
    assert store.closed


async def test_doctor_checks_a_third_party_store_without_opening_it(tmp_path: Path, dict_registered: None) -> None:
    from openma.doctor import diagnose

    settings = Settings(sqlite_path=str(tmp_path / "p.db"), blob_url="dict://test")
    [blobs] = [c for c in await diagnose(settings) if c.part.startswith("blobs")]
    assert blobs.ok and "open_dict_store" in blobs.detail, blobs
    assert OPENED == {}
    registry.blob_stores.register("nodict", "a_module_not_installed_anywhere:open")
    try:
        bad = Settings(sqlite_path=str(tmp_path / "p.db"), blob_url="nodict://test")
        [blobs] = [c for c in await diagnose(bad) if c.part.startswith("blobs")]
        assert not blobs.ok and "cannot be loaded" in blobs.detail, blobs
    finally:
        registry.blob_stores.unregister("nodict")


async def test_a_broken_blob_store_fails_the_start_before_any_database_file(
    tmp_path: Path, dict_registered: None
) -> None:
    async def refuses(settings: Settings) -> BlobStore:
        raise ConfigError("blob_url: no such dict")

    registry.blob_stores.register("nodict", refuses)
    try:
        settings = Settings(sqlite_path=str(tmp_path / "p.db"), blob_url="nodict://x")
        with pytest.raises(ConfigError, match="no such dict"):
            await Platform.connect(settings)
        assert not (tmp_path / "p.db").exists()
    finally:
        registry.blob_stores.unregister("nodict")


async def test_the_tenant_view_binds_cursors_and_skips_reserved_objects() -> None:
    store = DictBlobStore()
    view = tenant_view(store, TENANT)
    assert isinstance(view, PrefixedBlobs)
    for i in range(5):
        await store.put(f"t/{TENANT}/.openma/sessions/s/{i}", b"internal")
        await store.put(f"t/{TENANT}/sessions/s/{i}", b"old spill")
    await view.put("a", b"1")
    await view.put("z", b"2")
    first = await view.list(limit=1)
    assert [i.key for i in first.items] == ["a"] and first.next_cursor is not None
    second = await view.list(cursor=first.next_cursor, limit=1)  # pages of hidden objects are skipped
    assert [i.key for i in second.items] == ["z"]
    other = tenant_view(store, "tnt_01m8000000000000000000000b")
    with pytest.raises(InvalidInput, match="another list"):
        await other.list(cursor=first.next_cursor, limit=1)
    with pytest.raises(InvalidInput, match="another list"):
        await view.list("a", cursor=first.next_cursor, limit=1)
    assert await view.expire("", datetime.now(UTC) + timedelta(days=1)) == 2
    assert len(store.objects) == 10  # openma's objects of the tenant are left alone
    internal = tenant_view(store, TENANT, internal=True)
    assert isinstance(internal, PrefixedBlobs) and internal.legacy_snapshots is not None
    assert len((await internal.list(".openma/sessions/s/")).items) == 5
    with pytest.raises(ConfigError):
        PrefixedBlobs(internal, "x/")
    async with internal.open_read(".openma/sessions/s/0") as reader:
        assert reader.info.key == ".openma/sessions/s/0" and await reader.read() == b"internal"


async def test_bad_input_fails_before_the_tenant_check() -> None:
    async def no_such_tenant() -> None:
        raise NotFound("no such tenant")

    view = tenant_view(DictBlobStore(), TENANT, ensure=no_such_tenant)
    for kwargs in ({"data": "text"}, {"data": b"x", "if_match": ""}, {"data": b"x", "ttl": -1}):
        with pytest.raises(InvalidInput):
            await view.put("k", **kwargs)
    with pytest.raises(NotFound, match="no such tenant"):
        await view.put("k", b"x")


async def test_the_fsspec_store_keeps_its_own_tenant_view(tmp_path: Path) -> None:
    from openma.adapters.fsspec_blobs import FsspecBlobStore

    root = await FsspecBlobStore.open(f"file://{tmp_path}/blobs")
    try:
        assert isinstance(tenant_view(root, TENANT), FsspecBlobStore)
        with pytest.raises(InvalidInput):
            tenant_view(root, "not-a-tenant")
    finally:
        await root.aclose()


async def test_sandboxes_is_a_deprecated_alias_of_sandbox_orchestrator(tmp_path: Path) -> None:
    settings = Settings(
        sqlite_path=str(tmp_path / "p.db"),
        blob_url=f"file://{tmp_path}/blobs",
        local_sandbox_root=str(tmp_path / "sandboxes"),
    )
    async with Platform.open(settings) as oma:
        orchestrator = await oma.sandbox_orchestrator()
        with pytest.warns(DeprecationWarning, match="sandbox_orchestrator"):
            assert await oma.sandboxes() is orchestrator
        await anyio.lowlevel.checkpoint()
