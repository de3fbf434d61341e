"""What the fsspec blob store promises beyond the port: tenant views, real processes racing and crashing
on file://, files it did not write, settings, the event loop staying free, trio, and bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.fsspec_blobs._common import EXPIRY_DIR, TMP_DIR, marker_name, marker_time
from openma.errors import ConfigError, Conflict, InvalidInput, NotFound
from openma.settings import Settings
from openma.testing.blobs import pattern
from tests.fixtures.s3 import S3Endpoint

MIB = 1 << 20
TENANT_A = "tnt_01h00000000000000000000000"
TENANT_B = "tnt_01h00000000000000000000001"
ROOT = Path(__file__).resolve().parents[1]


async def _run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(timeout):
        return await anyio.run_process(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )


@pytest.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[FsspecBlobStore]:
    store = await FsspecBlobStore.open(f"file://{tmp_path}/blobs")
    yield store
    await store.aclose()


# -- tenant views


@pytest.mark.anyio
async def test_tenant_views_are_isolated(file_store: FsspecBlobStore) -> None:
    a, b = file_store.for_tenant(TENANT_A), file_store.for_tenant(TENANT_B)
    info = await a.put("files/report.txt", b"a's")
    assert info.key == "files/report.txt"
    await b.put("files/report.txt", b"b's")
    await a.put("files/other.txt", b"a2")
    assert await a.get("files/report.txt") == b"a's"
    assert await b.get("files/report.txt") == b"b's"
    assert [i.key for i in await b.list()] == ["files/report.txt"]
    assert [i.key for i in await a.list("files/")] == ["files/other.txt", "files/report.txt"]
    # the admin view sees every tenant's keys under t/<tenant>/
    admin_keys = [i.key for i in await file_store.list(limit=10)]
    assert admin_keys == [
        f"t/{TENANT_A}/files/other.txt",
        f"t/{TENANT_A}/files/report.txt",
        f"t/{TENANT_B}/files/report.txt",
    ]
    # cursors do not travel between tenants
    cursor = (await a.list(limit=1)).next_cursor
    assert cursor is not None
    with pytest.raises(InvalidInput):
        await b.list(cursor=cursor)
    with pytest.raises(InvalidInput):
        await file_store.list(cursor=cursor)
    # a tenant cannot climb out of its prefix
    for bad in ["../" + TENANT_B + "/files/report.txt", "/t/x", ".openma/meta/x"]:
        with pytest.raises(InvalidInput):
            await a.get(bad)
    with pytest.raises(InvalidInput):
        file_store.for_tenant("../t")
    # a tenant's sweep deletes only its own expired objects
    await a.put("gone", b"x", ttl=SHORT)
    await b.put("gone", b"x", ttl=SHORT)
    await anyio.sleep(SHORT * 3)
    assert await a.sweep_expired() == 1
    assert await a.sweep_expired() == 0
    assert (await file_store.sweep_expired()) == 1  # the root sweeps every tenant
    with pytest.raises(NotFound):
        await b.get("gone")
    await a.delete("files/other.txt")
    assert await b.get("files/report.txt") == b"b's"


SHORT = 0.05


# -- real processes on file://

RACER = """
import json, sys, time
import anyio
from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.errors import Conflict

root, me, start = sys.argv[1], sys.argv[2], float(sys.argv[3])

async def main():
    store = await FsspecBlobStore.open(root)
    while time.time() < start:
        time.sleep(0.001)
    wins = []
    for i in range(40):
        try:
            await store.put(f"race/{i}", me.encode(), if_none_match="*")
            wins.append(i)
        except Conflict:
            pass
    bumps = 0
    while bumps < 25:  # read-modify-write a counter; if_match makes lost updates impossible
        info = await store.head("counter")
        value = int(await store.get_range("counter", 0))
        try:
            await store.put("counter", str(value + 1).encode(), if_match=info.etag)
            bumps += 1
        except Conflict:
            pass
    print(json.dumps(wins))

anyio.run(main)
"""


@pytest.mark.anyio
async def test_processes_racing_conditional_puts(file_store: FsspecBlobStore, tmp_path: Path) -> None:
    await file_store.put("counter", b"0")
    root = f"file://{tmp_path}/blobs"
    start = time.time() + 1.0
    wins: dict[str, list[int]] = {}

    async def racer(name: str) -> None:
        proc = await anyio.run_process(
            [sys.executable, "-c", RACER, root, name, str(start)],
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        wins[name] = json.loads(proc.stdout)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(racer, f"p{n}")
    for i in range(40):
        winners = [p for p, won in wins.items() if i in won]
        assert len(winners) == 1, (i, winners)
        assert await file_store.get(f"race/{i}") == winners[0].encode()
    assert await file_store.get("counter") == b"100"


CRASHER = """
import os, signal, sys
import anyio
from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.fsspec_blobs.local import LocalEngine

root, mode = sys.argv[1], sys.argv[2]
publish = LocalEngine._publish

def crashing_publish(self, src, dst):
    if "/.openma/" not in dst:  # the object's rename: die between it and the record written just before
        if mode == "lose-staged":
            os.unlink(src)
        os.kill(os.getpid(), signal.SIGKILL)
    return publish(self, src, dst)

LocalEngine._publish = crashing_publish

async def main():
    store = await FsspecBlobStore.open(root)
    await store.put("doc", b"new bytes", content_type="text/new", metadata={"v": "2"})

anyio.run(main)
"""


@pytest.mark.anyio
async def test_a_put_killed_between_record_and_rename_is_finished_by_the_next_reader(
    file_store: FsspecBlobStore, tmp_path: Path
) -> None:
    old = await file_store.put("doc", b"old bytes", content_type="text/old")
    proc = await _run_python(CRASHER, f"file://{tmp_path}/blobs", "keep-staged")
    assert proc.returncode == -9, proc.stderr.decode()
    head = await file_store.head("doc")
    assert await file_store.get("doc") == b"new bytes"
    assert (head.content_type, head.metadata, head.size) == ("text/new", {"v": "2"}, 9)
    assert head.etag != old.etag
    await file_store.put("doc", b"newer", if_match=head.etag)


@pytest.mark.anyio
async def test_a_put_killed_after_losing_its_staged_file_leaves_the_old_bytes(
    file_store: FsspecBlobStore, tmp_path: Path
) -> None:
    await file_store.put("doc", b"old bytes", content_type="text/old")
    proc = await _run_python(CRASHER, f"file://{tmp_path}/blobs", "lose-staged")
    assert proc.returncode == -9, proc.stderr.decode()
    assert await file_store.get("doc") == b"old bytes"  # served as it is on disk, never torn
    head = await file_store.head("doc")
    assert head.size == 9
    await file_store.put("doc", b"replaced", if_match=head.etag)
    assert await file_store.get("doc") == b"replaced"


@pytest.mark.anyio
async def test_files_it_did_not_write_are_served(file_store: FsspecBlobStore, tmp_path: Path) -> None:
    (tmp_path / "blobs" / "imported").mkdir()
    (tmp_path / "blobs" / "imported" / "data.csv").write_bytes(b"a,b\n1,2\n")
    info = await file_store.head("imported/data.csv")
    assert info.size == 8
    assert info.content_type == "application/octet-stream"
    assert await file_store.get_range("imported/data.csv", 4) == b"1,2\n"
    assert [i.key for i in await file_store.list("imported/")] == ["imported/data.csv"]
    with pytest.raises(Conflict):
        await file_store.put("imported/data.csv", b"x", if_none_match="*")
    await file_store.put("imported/data.csv", b"c,d\n", if_match=info.etag, content_type="text/csv")
    assert (await file_store.head("imported/data.csv")).content_type == "text/csv"
    await file_store.delete("imported/data.csv")
    assert not (tmp_path / "blobs" / "imported").exists()  # empty directories are pruned


@pytest.mark.anyio
async def test_symlinks_are_not_followed(file_store: FsspecBlobStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside the root")
    os.symlink(secret, tmp_path / "blobs" / "link")
    with pytest.raises(NotFound):
        await file_store.get("link")
    assert [i.key for i in await file_store.list()] == []


@pytest.mark.anyio
async def test_failed_and_abandoned_uploads_leave_no_debris(file_store: FsspecBlobStore, tmp_path: Path) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * MIB
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await file_store.put("k", failing())
    staging = tmp_path / "blobs" / TMP_DIR
    assert [p.name for p in staging.iterdir()] == []
    abandoned = staging / "abandoned-by-a-crash"
    abandoned.write_bytes(b"x")
    os.utime(abandoned, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    fresh = staging / "still-uploading"
    fresh.write_bytes(b"x")
    await file_store.sweep_expired()
    assert [p.name for p in staging.iterdir()] == ["still-uploading"]


@pytest.mark.anyio
async def test_s3_sweep_aborts_abandoned_multipart_uploads(s3_endpoint: S3Endpoint, s3_blob_url: str) -> None:
    store = await FsspecBlobStore.open(s3_blob_url, storage_options=s3_endpoint.storage_options())
    engine: Any = store._engine
    await engine._call("create_multipart_upload", Key=engine.base + "orphan")
    # (moto reports every upload as initiated in 2010, so "too young to abort" cannot be shown here)
    assert await engine.clean_uploads(int(time.time() * 1000) + 60_000) == 1
    listed = await engine._call("list_multipart_uploads", Prefix=engine.base)
    assert listed.get("Uploads", []) == []


# -- opening from settings


@pytest.mark.anyio
async def test_from_settings_on_s3(s3_endpoint: S3Endpoint) -> None:
    settings = Settings(
        blob_url=s3_endpoint.blob_url(),
        s3_endpoint_url=s3_endpoint.url,
        s3_region=s3_endpoint.region,
        s3_access_key_id=s3_endpoint.key,
        s3_secret_access_key=s3_endpoint.secret,
    )
    store = await FsspecBlobStore.from_settings(settings)
    await store.put("hello", b"world")
    assert await store.get("hello") == b"world"
    missing = Settings(
        blob_url="s3://no-such-bucket/x",
        s3_endpoint_url=s3_endpoint.url,
        s3_region=s3_endpoint.region,
        s3_access_key_id=s3_endpoint.key,
        s3_secret_access_key=s3_endpoint.secret,
    )
    with pytest.raises(ConfigError, match="no-such-bucket"):
        await FsspecBlobStore.from_settings(missing)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("no-scheme", {}),
        ("nosuchfs://x", {}),
        ("s3://", {}),
        ("file:///tmp/x", {"key": "v"}),
    ],
)
async def test_bad_urls_are_config_errors(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        await FsspecBlobStore.open(url, storage_options=options)


@pytest.mark.anyio
async def test_file_root_that_cannot_be_made_is_storage_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"x")
    from openma.errors import StorageUnavailable

    with pytest.raises(StorageUnavailable):
        await FsspecBlobStore.open(f"file://{tmp_path}/a-file/blobs")


# -- the event loop stays free, on asyncio and trio


async def _max_gap_while(work: Any) -> float:
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await work()
        done.set()
    return max(gaps)


@pytest.mark.anyio
async def test_big_puts_and_gets_do_not_block_the_loop(file_store: FsspecBlobStore) -> None:
    data = pattern(64 * MIB, seed=9)

    async def work() -> None:
        await file_store.put("big", data)
        assert len(await file_store.get("big")) == len(data)

    assert await _max_gap_while(work) < 0.25


class TestOnTrio:
    """The same store on trio: thread hops for files, the cross-loop bridge for S3."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.mark.anyio
    @pytest.mark.parametrize("kind", ["file", "memory", "s3"])
    async def test_round_trip(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        if kind == "file":
            store = await FsspecBlobStore.open(f"file://{tmp_path}/blobs")
        elif kind == "memory":
            store = await FsspecBlobStore.open(f"memory://trio-{time.time_ns()}")
        else:
            endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
            store = await FsspecBlobStore.open(
                endpoint.blob_url(), storage_options=endpoint.storage_options(), part_size=5 * MIB
            )
        data = pattern(11 * MIB, seed=7)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), MIB):
                yield data[i : i + MIB]

        info = await store.put("t/obj", chunks(), if_none_match="*")
        with pytest.raises(Conflict):
            await store.put("t/obj", b"x", if_none_match="*")
        got = b""
        async with store.open_read("t/obj") as reader:
            async for chunk in reader:
                got += chunk
        assert got == data
        assert (await store.head("t/obj")).etag == info.etag
        assert [i.key for i in await store.list("t/")] == ["t/obj"]
        await store.delete("t/obj")
        with pytest.raises(NotFound):
            await store.get("t/obj")


# -- memory stays bounded for big objects

RSS_PROBE = """
import hashlib, resource, sys
import anyio
from openma.adapters.fsspec_blobs import FsspecBlobStore

root, size = sys.argv[1], int(sys.argv[2])
MIB = 1 << 20

async def source():
    block = hashlib.sha256(b"x").digest() * (MIB // 32)
    for _ in range(size // MIB):
        yield block

def peak_kib():
    # VmHWM, reset first: ru_maxrss cannot be reset and, on Linux, starts at the parent's peak
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

async def main():
    store = await FsspecBlobStore.open(root)
    await store.put("warm-up", b"x" * MIB)
    assert len(await store.get("warm-up")) == MIB
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = peak_kib()
    await store.put("big", source())
    total = 0
    async with store.open_read("big") as reader:
        async for chunk in reader:
            total += len(chunk)
    assert total == size, total
    streamed = peak_kib()
    whole = len(await store.get("big"))  # the contrast: the whole object in memory
    print(base, streamed, peak_kib(), whole)

anyio.run(main)
"""


@pytest.mark.anyio
async def test_a_200_mib_object_streams_in_bounded_memory(tmp_path: Path) -> None:
    proc = await _run_python(RSS_PROBE, f"file://{tmp_path}/blobs", str(200 * MIB))
    assert proc.returncode == 0, proc.stderr.decode()
    base_kib, streamed_kib, whole_kib, whole = map(int, proc.stdout.split())
    grew_mib = (streamed_kib - base_kib) / 1024
    assert grew_mib < 40, f"peak RSS grew by {grew_mib:.1f} MiB for a 200 MiB object"
    assert whole == 200 * MIB
    assert (whole_kib - base_kib) / 1024 > 190  # the probe sees memory: get() of the whole object shows up


@pytest.mark.parametrize("stamp", ["\u00b2", "0000000000001\u00b9", "\u0663", "", "12a"])
def test_an_expiry_marker_with_a_stamp_that_is_not_ascii_digits_is_ignored(stamp: str) -> None:
    # "²".isdigit() is true, but int() refuses it: a stray name in the expiry index is skipped, never raised
    assert marker_time(f"{EXPIRY_DIR}{stamp}/abc") is None
    assert marker_time(marker_name(1234, "k")) == 1234
