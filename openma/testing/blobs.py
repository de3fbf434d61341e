"""The contract of the blob store (:mod:`openma.ports.blobs`).

Combine ``BlobStoreContract`` with one async fixture, ``blob_store``, that yields a fresh, empty store
(a new bucket prefix or directory per test is enough), and declare the store's capabilities::

    import pytest
    from openma.testing import BlobStoreContract

    class TestMyBlobs(BlobStoreContract):
        capabilities = {"concurrent_writers", "nested_keys"}

        @pytest.fixture
        async def blob_store(self):
            store = await open_my_store(prefix=uuid.uuid4().hex)
            yield store
            await store.aclose()

Capabilities the blob contract reads: ``concurrent_writers`` (racing conditional puts), ``nested_keys``
(a key and keys below it, such as ``a`` and ``a/b``, may coexist; stores without it must refuse the second
with ``Conflict`` and keep the first intact).

TTL tests use real time with short TTLs and check each side on its own (a long TTL is still there, a short
one is gone after it lapsed), so a slow machine cannot make them flaky.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import anyio
import pytest

from openma.errors import Conflict, InvalidInput, NotFound
from openma.ports.blobs import BlobStore
from openma.testing._blob_cases import BAD_KEYS, GOOD_KEYS, MIB, SHORT_TTL, all_keys, chunked, lapse, pattern
from openma.testing.capabilities import check_adapter_agrees, check_requirements, requires
from openma.testing.stores import BAD_CURSORS

__all__ = ["BAD_KEYS", "GOOD_KEYS", "MIB", "SHORT_TTL", "BlobStoreContract", "chunked", "pattern"]


@pytest.mark.anyio
class BlobStoreContract:
    """Puts (bytes and streams), conditions, reads and ranges, TTL, lists, and key validation."""

    capabilities: ClassVar[set[str] | frozenset[str]] = frozenset()
    #: Size of the streamed object in the large-object test; larger than an S3 multipart part by default.
    large_object_size: ClassVar[int] = 12 * MIB

    @pytest.fixture(autouse=True)
    def _openma_requirements(self, request: pytest.FixtureRequest) -> None:
        check_requirements(self, request)

    async def test_declares_what_the_store_reports(self, blob_store: BlobStore, request: pytest.FixtureRequest) -> None:
        check_adapter_agrees(self, request, blob_store)

    # -- put and read

    async def test_put_get_head(self, blob_store: BlobStore) -> None:
        before = datetime.now(UTC) - timedelta(seconds=5)
        info = await blob_store.put(
            "docs/a.txt", b"hello", content_type="text/plain; charset=utf-8", metadata={"by": "tester", "ü": "✓"}
        )
        assert info.key == "docs/a.txt"
        assert info.size == 5
        assert info.etag
        assert '"' not in info.etag
        assert info.content_type == "text/plain; charset=utf-8"
        assert info.metadata == {"by": "tester", "ü": "✓"}
        assert before < info.created_at < datetime.now(UTC) + timedelta(seconds=5)
        assert info.expires_at is None
        assert await blob_store.get("docs/a.txt") == b"hello"
        head = await blob_store.head("docs/a.txt")
        assert (head.key, head.size, head.etag, head.content_type, head.metadata) == (
            info.key,
            info.size,
            info.etag,
            info.content_type,
            info.metadata,
        )
        assert abs((head.created_at - info.created_at).total_seconds()) < 1

    async def test_defaults_and_accepted_byte_types(self, blob_store: BlobStore) -> None:
        info = await blob_store.put("a", bytearray(b"ba"))
        assert info.content_type == "application/octet-stream"
        assert info.metadata == {}
        await blob_store.put("b", memoryview(b"mv"))
        assert await blob_store.get("a") == b"ba"
        assert await blob_store.get("b") == b"mv"

    async def test_overwrite_changes_etag(self, blob_store: BlobStore) -> None:
        first = await blob_store.put("k", b"one", metadata={"v": "1"})
        second = await blob_store.put("k", b"two!")
        assert first.etag != second.etag
        assert await blob_store.get("k") == b"two!"
        head = await blob_store.head("k")
        assert head.size == 4
        assert head.metadata == {}
        again = await blob_store.put("k", b"two!")
        assert again.etag  # same bytes may or may not keep the etag; it must still be valid for if_match
        await blob_store.put("k", b"three", if_match=again.etag)

    async def test_empty_object(self, blob_store: BlobStore) -> None:
        info = await blob_store.put("empty", b"")
        assert info.size == 0
        assert await blob_store.get("empty") == b""
        assert await blob_store.get_range("empty", 0, 10) == b""
        assert await blob_store.get_range("empty", 5) == b""
        async with blob_store.open_read("empty") as reader:
            assert reader.info.size == 0
            assert [c async for c in reader] == []
        streamed = await blob_store.put("empty2", chunked(b"", 10))
        assert streamed.size == 0
        assert await blob_store.get("empty2") == b""

    async def test_streamed_put_of_small_chunks(self, blob_store: BlobStore) -> None:
        data = pattern(300_000, seed=1)
        info = await blob_store.put("s/small", chunked(data, 7_000), content_type="application/x-test")
        assert info.size == len(data)
        assert await blob_store.get("s/small") == data
        assert (await blob_store.head("s/small")).content_type == "application/x-test"

    async def test_large_object_streams_both_ways(self, blob_store: BlobStore) -> None:
        data = pattern(self.large_object_size, seed=2)
        info = await blob_store.put("big/object.bin", chunked(data, MIB))
        assert info.size == len(data)
        digest = hashlib.sha256()
        sizes = []
        async with blob_store.open_read("big/object.bin", chunk_size=MIB) as reader:
            assert reader.info.size == len(data)
            assert reader.info.etag == info.etag
            async for chunk in reader:
                sizes.append(len(chunk))
                digest.update(chunk)
        assert digest.digest() == hashlib.sha256(data).digest()
        assert max(sizes) <= MIB
        tail = await blob_store.get_range("big/object.bin", len(data) - 1000)
        assert tail == data[-1000:]

    async def test_bad_data_writes_nothing(self, blob_store: BlobStore) -> None:
        async def bad_chunks() -> AsyncIterator[Any]:
            yield b"fine"
            yield "not bytes"

        async def failing() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("source broke")

        for bad in ["text", 5, None, [b"a"], {b"a"}]:
            with pytest.raises(InvalidInput):
                await blob_store.put("k", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            await blob_store.put("k", bad_chunks())
        with pytest.raises(RuntimeError):
            await blob_store.put("k", failing())
        await blob_store.put("kept", b"old")
        with pytest.raises(RuntimeError):
            await blob_store.put("kept", failing())
        assert await blob_store.get("kept") == b"old"
        assert await all_keys(blob_store) == ["kept"]

    # -- ranges and streaming reads

    async def test_get_range(self, blob_store: BlobStore) -> None:
        data = bytes(range(256)) * 4
        await blob_store.put("r", data)
        assert await blob_store.get_range("r", 0, 10) == data[:10]
        assert await blob_store.get_range("r", 100, 50) == data[100:150]
        assert await blob_store.get_range("r", 1000) == data[1000:]
        assert await blob_store.get_range("r", 1020, 100) == data[1020:]
        assert await blob_store.get_range("r", 1024) == b""
        assert await blob_store.get_range("r", 5000, 10) == b""
        assert await blob_store.get_range("r", 10, 0) == b""
        for offset, length in [(-1, None), (0, -1), ("0", None), (1.5, None), (True, None), (0, "2")]:
            with pytest.raises(InvalidInput):
                await blob_store.get_range("r", offset, length)  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            await blob_store.get_range("missing", 0, 10)
        with pytest.raises(NotFound):
            await blob_store.get_range("missing", 10, 0)

    async def test_open_read_ranges_and_read(self, blob_store: BlobStore) -> None:
        data = pattern(100_000, seed=3)
        await blob_store.put("o", data)
        async with blob_store.open_read("o", offset=10_000, length=50_000, chunk_size=8192) as reader:
            first = await reader.read(100)
            assert first == data[10_000:10_100]
            rest = b"".join([c async for c in reader])
            assert first + rest == data[10_000:60_000]
            assert await reader.read() == b""
        async with blob_store.open_read("o") as reader:
            assert await reader.read() == data
        with pytest.raises(InvalidInput):
            async with blob_store.open_read("o", chunk_size=0):
                pass
        with pytest.raises(NotFound):
            async with blob_store.open_read("missing"):
                pass

    async def test_reader_never_mixes_versions(self, blob_store: BlobStore) -> None:
        old, new = pattern(3 * MIB, seed=4), pattern(3 * MIB, seed=5)
        await blob_store.put("v", old)
        got = b""
        try:
            async with blob_store.open_read("v", chunk_size=MIB) as reader:
                got += await reader.read(MIB)
                await blob_store.put("v", new)
                async for chunk in reader:
                    got += chunk
        except Conflict:
            return  # refusing to finish is allowed; mixing is not
        assert got == old

    # -- missing objects and deletes

    async def test_missing(self, blob_store: BlobStore) -> None:
        with pytest.raises(NotFound):
            await blob_store.get("nope")
        with pytest.raises(NotFound):
            await blob_store.head("no/pe")
        await blob_store.delete("nope")  # idempotent

    async def test_delete(self, blob_store: BlobStore) -> None:
        await blob_store.put("d/1", b"x")
        await blob_store.put("d/2", b"y")
        await blob_store.delete("d/1")
        with pytest.raises(NotFound):
            await blob_store.get("d/1")
        await blob_store.delete("d/1")
        assert await all_keys(blob_store) == ["d/2"]
        await blob_store.put("d/1", b"back")
        assert await blob_store.get("d/1") == b"back"

    # -- keys

    @pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:30])
    async def test_bad_keys(self, blob_store: BlobStore, key: Any) -> None:
        with pytest.raises(InvalidInput):
            await blob_store.put(key, b"x")
        with pytest.raises(InvalidInput):
            await blob_store.get(key)
        with pytest.raises(InvalidInput):
            await blob_store.head(key)
        with pytest.raises(InvalidInput):
            await blob_store.delete(key)
        with pytest.raises(InvalidInput):
            async with blob_store.open_read(key):
                pass
        assert await all_keys(blob_store) == []

    async def test_unicode_and_odd_keys_round_trip(self, blob_store: BlobStore) -> None:
        for i, key in enumerate(GOOD_KEYS):
            await blob_store.put(key, f"value {i}".encode())
        for i, key in enumerate(GOOD_KEYS):
            assert await blob_store.get(key) == f"value {i}".encode()
            assert (await blob_store.head(key)).key == key
        assert await all_keys(blob_store, limit=5) == sorted(GOOD_KEYS)

    async def test_nested_keys_coexist_or_conflict(self, blob_store: BlobStore) -> None:
        await blob_store.put("n/a", b"file")
        try:
            await blob_store.put("n/a/b", b"below")
        except Conflict:
            assert "nested_keys" not in self.capabilities
        else:
            assert await blob_store.get("n/a/b") == b"below"
        assert await blob_store.get("n/a") == b"file"
        await blob_store.put("m/a/b", b"below")
        try:
            await blob_store.put("m/a", b"file")
        except Conflict:
            assert "nested_keys" not in self.capabilities
        else:
            assert await blob_store.get("m/a") == b"file"
        assert await blob_store.get("m/a/b") == b"below"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"content_type": "bad\ntype"},
            {"content_type": ""},
            {"content_type": "x" * 256},
            {"content_type": 5},
            {"metadata": {"k": 5}},
            {"metadata": {"": "v"}},
            {"metadata": {"k": "v" * 2000}},
            {"metadata": ["k"]},
            {"ttl": 0},
            {"ttl": -1},
            {"ttl": "60"},
            {"ttl": float("nan")},
            {"if_none_match": "etag"},
            {"if_match": ""},
            {"if_match": 5},
            {"if_none_match": "*", "if_match": "abc"},
        ],
    )
    async def test_bad_put_arguments_write_nothing(self, blob_store: BlobStore, kwargs: dict[str, Any]) -> None:
        with pytest.raises(InvalidInput):
            await blob_store.put("k", b"x", **kwargs)
        with pytest.raises(NotFound):
            await blob_store.head("k")

    # -- conditional puts

    async def test_if_none_match(self, blob_store: BlobStore) -> None:
        first = await blob_store.put("c", b"first", if_none_match="*")
        with pytest.raises(Conflict):
            await blob_store.put("c", b"second", if_none_match="*")
        assert await blob_store.get("c") == b"first"
        assert (await blob_store.head("c")).etag == first.etag

    async def test_if_match(self, blob_store: BlobStore) -> None:
        first = await blob_store.put("c", b"first")
        second = await blob_store.put("c", b"second", if_match=first.etag)
        with pytest.raises(Conflict):
            await blob_store.put("c", b"third", if_match=first.etag)
        assert await blob_store.get("c") == b"second"
        with pytest.raises(Conflict):
            await blob_store.put("missing", b"x", if_match=second.etag)
        with pytest.raises(NotFound):
            await blob_store.head("missing")
        await blob_store.put("c", b"fourth", if_match=f'"{second.etag}"')  # quoted etags are accepted too

    @requires("concurrent_writers")
    async def test_racing_if_none_match_has_one_winner(self, blob_store: BlobStore) -> None:
        for round_ in range(5):
            winners: list[int] = []
            losers: list[int] = []

            async def writer(
                i: int, key: str = f"race/{round_}", w: list[int] = winners, lo: list[int] = losers
            ) -> None:
                try:
                    await blob_store.put(key, f"writer {i}".encode(), if_none_match="*")
                    w.append(i)
                except Conflict:
                    lo.append(i)

            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(writer, i)
            assert len(winners) == 1
            assert len(losers) == 5
            assert await blob_store.get(f"race/{round_}") == f"writer {winners[0]}".encode()

    @requires("concurrent_writers")
    async def test_racing_if_match_has_one_winner(self, blob_store: BlobStore) -> None:
        base = await blob_store.put("cas", b"base")
        winners: list[int] = []

        async def writer(i: int) -> None:
            try:
                await blob_store.put("cas", f"writer {i}".encode(), if_match=base.etag)
                winners.append(i)
            except Conflict:
                pass

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(writer, i)
        assert len(winners) == 1
        assert await blob_store.get("cas") == f"writer {winners[0]}".encode()

    # -- TTL and lifecycle

    async def test_ttl_expiry(self, blob_store: BlobStore) -> None:
        long = await blob_store.put("ttl/long", b"x", ttl=3600)
        assert long.expires_at is not None
        assert long.created_at + timedelta(seconds=3590) < long.expires_at < long.created_at + timedelta(seconds=3610)
        short = await blob_store.put("ttl/short", b"x", ttl=timedelta(milliseconds=50))
        assert short.expires_at is not None
        await blob_store.put("ttl/forever", b"x")
        await lapse()
        for call in (blob_store.get, blob_store.head):
            with pytest.raises(NotFound):
                await call("ttl/short")
        with pytest.raises(NotFound):
            await blob_store.get_range("ttl/short", 0, 1)
        with pytest.raises(NotFound):
            async with blob_store.open_read("ttl/short"):
                pass
        assert (await blob_store.head("ttl/long")).expires_at == long.expires_at
        assert await all_keys(blob_store, "ttl/") == ["ttl/forever", "ttl/long"]
        assert await blob_store.sweep_expired() == 1
        assert await blob_store.sweep_expired() == 0
        assert await all_keys(blob_store, "ttl/") == ["ttl/forever", "ttl/long"]

    async def test_expired_objects_are_absent_for_conditions(self, blob_store: BlobStore) -> None:
        old = await blob_store.put("lease", b"old", ttl=SHORT_TTL)
        await lapse()
        with pytest.raises(Conflict):
            await blob_store.put("lease", b"stale", if_match=old.etag)
        new = await blob_store.put("lease", b"new", if_none_match="*")
        assert new.expires_at is None
        assert await blob_store.get("lease") == b"new"
        assert await blob_store.sweep_expired() == 0  # the new object is not expired: nothing to delete
        assert await blob_store.get("lease") == b"new"

    async def test_overwrite_clears_the_ttl(self, blob_store: BlobStore) -> None:
        await blob_store.put("k", b"short-lived", ttl=SHORT_TTL)
        await blob_store.put("k", b"kept")
        await lapse()
        assert await blob_store.sweep_expired() == 0
        assert await blob_store.get("k") == b"kept"
        assert (await blob_store.head("k")).expires_at is None

    async def test_expire_by_prefix_and_age(self, blob_store: BlobStore) -> None:
        await blob_store.put("logs/old1", b"x")
        await blob_store.put("logs/sub/old2", b"x")
        await blob_store.put("other/old", b"x")
        await anyio.sleep(0.05)
        cutoff = datetime.now(UTC)
        await anyio.sleep(0.05)
        await blob_store.put("logs/new", b"x")
        assert await blob_store.expire("logs/", cutoff) == 2
        assert await all_keys(blob_store) == ["logs/new", "other/old"]
        assert await blob_store.expire("logs/", cutoff) == 0
        with pytest.raises(InvalidInput):
            await blob_store.expire("logs/", datetime(2020, 1, 1))  # naive
        with pytest.raises(InvalidInput):
            await blob_store.expire("logs/", "yesterday")  # type: ignore[arg-type]

    # -- lists

    async def test_list_pages_in_key_order(self, blob_store: BlobStore) -> None:
        keys = ["b", "a/2", "a/1", "a-b", "a.b", "ab", "a/1/x", "Z", "é", "😀"]
        stored = []
        for key in keys:
            try:
                await blob_store.put(key, key.encode(), metadata={"k": key})
                stored.append(key)
            except Conflict:  # "a/1" vs "a/1/x" on stores without nested keys
                assert "nested_keys" not in self.capabilities
        assert await all_keys(blob_store, limit=3) == sorted(stored)
        page = await blob_store.list(limit=100)
        assert page.next_cursor is None
        assert [i.key for i in page] == sorted(stored)
        assert all(i.metadata == {"k": i.key} and i.size == len(i.key.encode()) for i in page)
        assert await all_keys(blob_store, "a/") == sorted(k for k in stored if k.startswith("a/"))
        assert await all_keys(blob_store, "a") == sorted(k for k in stored if k.startswith("a"))
        assert await all_keys(blob_store, "a/1") == sorted(k for k in stored if k.startswith("a/1"))
        assert await all_keys(blob_store, "zz") == []

    async def test_list_is_keyset(self, blob_store: BlobStore) -> None:
        for i in range(8):
            await blob_store.put(f"p/{i}", b"x")
        first = await blob_store.list("p/", limit=3)
        assert [i.key for i in first] == ["p/0", "p/1", "p/2"]
        await blob_store.delete("p/0")
        await blob_store.delete("p/3")
        await blob_store.put("p/25", b"x")
        second = await blob_store.list("p/", cursor=first.next_cursor, limit=3)
        assert [i.key for i in second] == ["p/25", "p/4", "p/5"]
        third = await blob_store.list("p/", cursor=second.next_cursor, limit=3)
        assert [i.key for i in third] == ["p/6", "p/7"]
        assert third.next_cursor is None

    async def test_list_skips_expired(self, blob_store: BlobStore) -> None:
        for i in range(6):
            await blob_store.put(f"e/{i}", b"x", ttl=SHORT_TTL if i % 2 else None)
        await lapse()
        page = await blob_store.list("e/", limit=2)
        assert [i.key for i in page] == ["e/0", "e/2"]
        rest = await blob_store.list("e/", cursor=page.next_cursor, limit=2)
        assert [i.key for i in rest] == ["e/4"]
        assert rest.next_cursor is None

    @pytest.mark.parametrize("cursor", BAD_CURSORS)
    async def test_malformed_cursor(self, blob_store: BlobStore, cursor: str) -> None:
        with pytest.raises(InvalidInput):
            await blob_store.list(cursor=cursor)

    async def test_foreign_cursor_and_bad_list_arguments(self, blob_store: BlobStore) -> None:
        for i in range(3):
            await blob_store.put(f"f/{i}", b"x")
        cursor = (await blob_store.list("f/", limit=1)).next_cursor
        assert cursor is not None
        with pytest.raises(InvalidInput):
            await blob_store.list("g/", cursor=cursor, limit=1)
        with pytest.raises(InvalidInput):
            await blob_store.list(cursor=cursor, limit=1)
        for limit in [0, -1, 1001, "5", 2.5, True, None]:
            with pytest.raises(InvalidInput):
                await blob_store.list(limit=limit)  # type: ignore[arg-type]
        for prefix in [5, None, "/abs", "a\x00", "a//"]:
            with pytest.raises(InvalidInput):
                await blob_store.list(prefix)  # type: ignore[arg-type]
