"""Blob and KV benchmark: openma's blob store next to raw fsspec doing the same, peak memory, KV operations.

    python bench/blobs.py             # medians of 3 runs
    python bench/blobs.py --quick     # smaller objects, one run (a smoke test)

* **Throughput** (MB/s, MB = 2**20 bytes). For ``file://`` and for S3 (s3fs against moto's threaded server on
  loopback, started here), openma's ``put``/``get`` of whole ``bytes`` objects, and its streamed forms
  (``put`` of an async iterator of 1 MiB chunks, ``open_read`` in 1 MiB chunks), next to raw fsspec doing the
  same from a worker thread: ``pipe_file`` / ``cat_file``. On ``file://`` openma fsyncs every object before it
  renames it into place, which raw ``pipe_file`` does not; ``raw + fsync`` is the raw write made as durable,
  the honest baseline for it. Variants alternate (openma, raw, raw, openma, ...) so that noise falls on all.
* **Peak memory**: a child process puts a 200 MiB object from a stream and reads it back with ``open_read``;
  the figure is how far its peak RSS rose above where it stood before (``VmHWM`` after resetting it, on
  Linux: ``ru_maxrss`` cannot be reset and starts at the parent's peak; ``ru_maxrss`` elsewhere). The S3 child talks to
  the moto server of this process, so the server's copy of the bytes is not counted. ``get`` (the whole
  object as one ``bytes``) is shown for contrast.
* **KV** operations per second through the ``KVStore`` port on SQLite, and on Postgres when its server
  binaries are installed (a throwaway server is started, as in ``bench/stores.py``); ``put``, ``get`` and
  ``incr`` also next to the same statements sent by hand (one thread hop per statement on SQLite with the
  same pragmas, one round trip on Postgres), in alternating slices.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.sql.backend import SqlStoreBackend
from openma.adapters.sqlite import SqliteClient
from openma.ports.kv import KVStore
from openma.ports.tenancy import TenantRef

MIB = 1 << 20
CHUNK = MIB
BUCKET = "openma-bench"
ROUNDS = 4
ROOT = Path(__file__).resolve().parents[1]


def payload(size: int) -> bytes:
    block = os.urandom(MIB)
    return (block * (size // MIB + 1))[:size]


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        yield bytes(view[i : i + CHUNK])


class Series:
    """Per (section, operation, contender): one figure per run; the report shows medians."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str, str], list[float]] = {}

    def add(self, section: str, op: str, who: str, value: float) -> None:
        self.runs.setdefault((section, op, who), []).append(value)

    def median(self, section: str, op: str, who: str) -> float | None:
        values = self.runs.get((section, op, who))
        return statistics.median(values) if values else None


async def alternate(contenders: dict[str, Callable[[int], Awaitable[None]]], rounds: int) -> dict[str, float]:
    """Seconds each contender spent over ``rounds`` calls, taken in alternating order."""
    spent = dict.fromkeys(contenders, 0.0)
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            began = time.perf_counter()
            await contenders[name](r)
            spent[name] += time.perf_counter() - began
    return spent


# -- throughput


async def throughput(
    series: Series, section: str, store: FsspecBlobStore, raw_fs: Any, raw_root: str, size: int
) -> None:
    data = payload(size)
    rounds = ROUNDS
    mb = size / MIB * rounds

    def raw_path(kind: str, r: int) -> str:
        return f"{raw_root}/{kind}-{r}"

    def durable_write(path: str) -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    async def openma_put(r: int) -> None:
        await store.put(f"put-{r}", data)

    async def openma_stream_put(r: int) -> None:
        await store.put(f"stream-{r}", chunks(data))

    async def raw_put(r: int) -> None:
        await anyio.to_thread.run_sync(raw_fs.pipe_file, raw_path("put", r), data)

    async def raw_put_fsync(r: int) -> None:
        await anyio.to_thread.run_sync(durable_write, raw_path("fsync", r))

    puts: dict[str, Callable[[int], Awaitable[None]]] = {
        "openma put": openma_put,
        "openma put (stream)": openma_stream_put,
        "raw fsspec pipe_file": raw_put,
    }
    if section == "file":
        puts["raw fsspec + fsync"] = raw_put_fsync
    for who, seconds in (await alternate(puts, rounds)).items():
        series.add(section, "put", who, mb / seconds)

    async def openma_get(r: int) -> None:
        assert len(await store.get(f"put-{r}")) == size

    async def openma_stream_get(r: int) -> None:
        got = 0
        async with store.open_read(f"put-{r}", chunk_size=CHUNK) as reader:
            async for chunk in reader:
                got += len(chunk)
        assert got == size

    async def raw_get(r: int) -> None:
        assert len(await anyio.to_thread.run_sync(raw_fs.cat_file, raw_path("put", r))) == size

    gets: dict[str, Callable[[int], Awaitable[None]]] = {
        "openma get": openma_get,
        "openma open_read (stream)": openma_stream_get,
        "raw fsspec cat_file": raw_get,
    }
    for who, seconds in (await alternate(gets, rounds)).items():
        series.add(section, "get", who, mb / seconds)
    for r in range(rounds):
        for key in (f"put-{r}", f"stream-{r}"):
            await store.delete(key)
        for kind in ("put", "fsync"):
            if raw_fs.exists(raw_path(kind, r)):
                await anyio.to_thread.run_sync(raw_fs.rm_file, raw_path(kind, r))


class Moto:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.options: dict[str, Any] = {
            "key": "bench",
            "secret": "bench",
            "endpoint_url": f"http://{host}:{port}",
            "client_kwargs": {"region_name": "us-east-1"},
        }
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.options["endpoint_url"],
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        self.server.stop()


# -- peak memory

RSS_CHILD = """
import json, os, resource, sys
import anyio
from openma.adapters.fsspec_blobs import FsspecBlobStore

url, options, size, mode = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MIB = 1 << 20

def reset_peak():
    # ru_maxrss cannot be reset and, on Linux, a child starts with its parent's peak (it is kept across
    # fork and exec); VmHWM can be reset (clear_refs 5) and then measures this process alone.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass

def rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

async def source():
    block = os.urandom(MIB)
    for _ in range(size // MIB):
        yield block

async def main():
    store = await FsspecBlobStore.open(url, storage_options=options or None)
    await store.put("warm-up", b"x" * MIB)
    assert len(await store.get("warm-up")) == MIB
    reset_peak()
    base = rss_mib()
    await store.put("big", source())
    after_put = rss_mib()
    if mode == "stream":
        got = 0
        async with store.open_read("big") as reader:
            async for chunk in reader:
                got += len(chunk)
    else:
        got = len(await store.get("big"))
    assert got == size, got
    print(json.dumps({"base": base, "put": after_put - base, "get": rss_mib() - base}))

anyio.run(main)
"""


def peak_rss(url: str, options: dict[str, Any], size: int, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RSS_CHILD), url, json.dumps(options), str(size), mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    figures: dict[str, float] = json.loads(out.stdout)
    return figures


# -- KV


KV_PUT = (
    "INSERT INTO kv_entries (tenant_id, key, value, counter, expires_at, updated_at) VALUES (?, ?, ?, NULL, NULL, ?)"
    " ON CONFLICT (tenant_id, key) DO UPDATE SET value = excluded.value, counter = NULL, expires_at = NULL,"
    " updated_at = excluded.updated_at"
)
KV_GET = (
    "SELECT key, value, counter, expires_at, updated_at FROM kv_entries"
    " WHERE tenant_id = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)"
)
KV_INCR = (
    "INSERT INTO kv_entries (tenant_id, key, value, counter, expires_at, updated_at) VALUES (?, ?, NULL, 1, NULL, ?)"
    " ON CONFLICT (tenant_id, key) DO UPDATE SET counter = kv_entries.counter + 1, updated_at = excluded.updated_at"
    " RETURNING counter"
)
RAW_TENANT = "tnt_00000000000000000000000000"
SLICES = 5


class RawKV:
    """The same statements sent by hand: one ``to_thread`` hop per statement on SQLite, one round trip on
    Postgres; no validation, no TTL or overflow checks."""

    def __init__(self, run: Callable[[str, tuple[Any, ...]], Awaitable[Any]]) -> None:
        self._run = run

    async def put(self, i: int) -> None:
        await self._run(KV_PUT, (RAW_TENANT, f"cfg:{i}", f"value {i}", int(time.time() * 1000)))

    async def get(self, i: int) -> None:
        await self._run(KV_GET, (RAW_TENANT, f"cfg:{i}", int(time.time() * 1000)))

    async def incr(self, i: int) -> None:
        await self._run(KV_INCR, (RAW_TENANT, "counter", int(time.time() * 1000)))


async def sliced(contenders: dict[str, Callable[[int], Awaitable[Any]]], n: int, tasks: int = 1) -> dict[str, float]:
    """Operations per second of each contender, run in alternating slices of ``n / SLICES`` calls."""
    spent = dict.fromkeys(contenders, 0.0)
    per = max(1, n // SLICES)
    names = list(contenders)
    for sl in range(SLICES):
        for name in names if sl % 2 == 0 else reversed(names):
            fn = contenders[name]
            began = time.perf_counter()
            if tasks == 1:
                for i in range(sl * per, (sl + 1) * per):
                    await fn(i)
            else:

                async def worker(w: int, fn: Callable[[int], Awaitable[Any]] = fn, base: int = sl * per) -> None:
                    for i in range(base + w, base + per, tasks):
                        await fn(i)

                async with anyio.create_task_group() as tg:
                    for w in range(tasks):
                        tg.start_soon(worker, w)
            spent[name] += time.perf_counter() - began
    return {name: per * SLICES / t for name, t in spent.items()}


async def kv_ops(series: Series, engine: str, kv: KVStore, raw: RawKV, n: int) -> None:
    def record(op: str, figures: dict[str, float]) -> None:
        for who, value in figures.items():
            series.add("kv", op, f"{engine} {who}", value)

    async def put(i: int) -> None:
        await kv.put(f"cfg:{i}", f"value {i}")

    async def get(i: int) -> None:
        await kv.get(f"cfg:{i % n}")

    async def incr(i: int) -> None:
        await kv.incr("counter", ttl=3600)

    async def put_if_absent(i: int) -> None:
        await kv.put_if_absent(f"lock:{time.time_ns()}:{i}", "owner", ttl=30)

    async def cas(i: int) -> None:
        await kv.compare_and_set("state", i, i + 1)

    record("put", await sliced({"openma": put, "raw": raw.put}, n))
    record("get", await sliced({"openma": get, "raw": raw.get}, 2 * n))
    record("get x32", await sliced({"openma": get}, 2 * n, tasks=32))
    record("incr", await sliced({"openma": incr, "raw": raw.incr}, n))
    record("incr x32 (one key)", await sliced({"openma": incr}, n, tasks=32))
    record("put_if_absent", await sliced({"openma": put_if_absent}, n))
    await kv.put("state", 0)
    record("compare_and_set", await sliced({"openma": cas}, n))
    listed = 0
    began = time.perf_counter()
    cursor = None
    while True:
        page = await kv.list("cfg:", cursor=cursor, limit=100)
        listed += len(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    record("list (entries/s)", {"openma": listed / (time.perf_counter() - began)})
    entry = await kv.get("counter")
    assert entry is not None and entry.value == 2 * (n // SLICES) * SLICES


async def kv_backend_sqlite(path: Path) -> SqlStoreBackend:
    client = await SqliteClient.open(str(path))
    backend = SqlStoreBackend("cf", client)
    await backend.migrate()
    return backend


async def kv_run(series: Series, backend: SqlStoreBackend, engine: str, raw: RawKV, n: int) -> None:
    tenant = await backend.tenants.create(name="bench")
    await kv_ops(series, engine, backend.kv(TenantRef(tenant.id)), raw, n)


async def sqlite_kv(series: Series, path: Path, n: int) -> None:
    backend = await kv_backend_sqlite(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")

    async def run(sql: str, params: tuple[Any, ...]) -> Any:
        return await anyio.to_thread.run_sync(lambda: conn.execute(sql, params).fetchall())

    try:
        await kv_run(series, backend, "sqlite", RawKV(run), n)
    finally:
        conn.close()
        await backend.aclose()


# -- report


def table(series: Series, section: str, op: str, baseline: str) -> list[str]:
    lines = []
    base = series.median(section, op, baseline)
    for (s, o, who), _ in series.runs.items():
        if (s, o) != (section, op):
            continue
        value = series.median(s, o, who)
        assert value is not None
        ratio = f"{value / base:.2f}" if base else "-"
        lines.append(f"| {section} | {op} | {who} | {value:,.0f} | {ratio} |")
    return lines


def report(series: Series, runs: int, sizes: dict[str, int], rss: dict[str, dict[str, float]], notes: list[str]) -> str:
    lines = [
        f"Blob and KV benchmark: medians of {runs} run(s); {os.cpu_count()} cores, Python {platform.python_version()}",
        f"objects: file {sizes['file'] // MIB} MiB, S3 {sizes['s3'] // MIB} MiB"
        f" ({ROUNDS} puts and {ROUNDS} gets per contender per run)",
        "",
        "| store | op | contender | MB/s | vs raw fsspec |",
        "|---|---|---|---:|---:|",
    ]
    for section, raw_put, raw_get in (
        ("file", "raw fsspec pipe_file", "raw fsspec cat_file"),
        ("s3", "raw fsspec pipe_file", "raw fsspec cat_file"),
    ):
        lines += table(series, section, "put", raw_put)
        lines += table(series, section, "get", raw_get)
    if series.median("file", "put", "raw fsspec + fsync"):
        durable = series.median("file", "put", "raw fsspec + fsync")
        mine = series.median("file", "put", "openma put")
        assert durable and mine
        lines += ["", f"file put vs raw fsspec + fsync (the same durability): {mine / durable:.2f}"]
    lines += ["", "| store | 200 MiB object | peak RSS rise after put | after read |", "|---|---|---:|---:|"]
    for name, figures in rss.items():
        lines.append(f"| {name} | | {figures['put']:.0f} MiB | {figures['get']:.0f} MiB |")
    lines += ["", "| KV operation | engine | openma ops/s | raw ops/s | openma / raw |", "|---|---|---:|---:|---:|"]
    for (section, op, who), _ in series.runs.items():
        if section != "kv" or not who.endswith(" openma"):
            continue
        engine = who.removesuffix(" openma")
        mine = series.median(section, op, who)
        theirs = series.median(section, op, f"{engine} raw")
        assert mine is not None
        raw = f"{theirs:,.0f} | {mine / theirs:.2f}" if theirs else "- | -"
        lines.append(f"| {op} | {engine} | {mine:,.0f} | {raw} |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    runs = 1 if args.quick else args.runs
    sizes = {"file": (16 if args.quick else 64) * MIB, "s3": (8 if args.quick else 16) * MIB}
    kv_n = 200 if args.quick else 600
    rss_size = (40 if args.quick else 200) * MIB
    series = Series()
    notes: list[str] = []
    started = time.monotonic()
    import fsspec

    moto = Moto()
    try:
        s3_store = await FsspecBlobStore.open(f"s3://{BUCKET}/openma", storage_options=moto.options)
        s3_raw = fsspec.filesystem("s3", use_listings_cache=False, **moto.options)
        with tempfile.TemporaryDirectory(prefix="openma-bench-") as tmp:
            file_store = await FsspecBlobStore.open(f"file://{tmp}/openma")
            os.makedirs(f"{tmp}/raw")
            for run in range(runs):
                await throughput(series, "file", file_store, fsspec.filesystem("file"), f"{tmp}/raw", sizes["file"])
                await throughput(series, "s3", s3_store, s3_raw, f"{BUCKET}/raw", sizes["s3"])
                print(f"throughput run {run + 1}/{runs} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
            rss = {
                "file, put stream + open_read": peak_rss(f"file://{tmp}/rss", {}, rss_size, "stream"),
                "s3, put stream + open_read": peak_rss(f"s3://{BUCKET}/rss", moto.options, rss_size, "stream"),
                "file, put stream + get (whole bytes)": peak_rss(f"file://{tmp}/rss2", {}, rss_size, "whole"),
            }
            print(f"peak RSS done ({time.monotonic() - started:.1f} s)", file=sys.stderr)
            for run in range(runs):
                await sqlite_kv(series, Path(tmp) / f"kv{run}.db", kv_n)
            await postgres_kv(series, runs, kv_n, notes, args.no_postgres)
            print(f"KV done ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    finally:
        moto.stop()
    print(report(series, runs, sizes, rss, notes))


async def postgres_kv(series: Series, runs: int, n: int, notes: list[str], skip: bool) -> None:
    if skip:
        notes.append("Postgres KV skipped (--no-postgres).")
        return
    try:
        from openma.adapters.postgres import open_store_backend
        from openma.settings import Settings
        from openma.testing.pgserver import PgServer, PgServerUnavailable
    except ImportError as exc:
        notes.append(f"Postgres KV skipped: {exc}")
        return
    try:
        server = PgServer.start()
    except PgServerUnavailable as exc:
        notes.append(f"Postgres KV skipped: {exc}")
        return
    try:
        for run in range(runs):
            server.create_database(f"kv{run}")
            settings = Settings(
                postgres_url=server.url(f"kv{run}"),
                store_backends={"default": "pg"},
                root_secret="bench-root-secret-0123456789",
            )
            backend = await open_store_backend(settings)
            import psycopg

            conn = await psycopg.AsyncConnection.connect(server.url(f"kv{run}"), autocommit=True)

            async def raw(sql: str, params: tuple[Any, ...], conn: Any = conn) -> Any:
                cur = await conn.execute(sql.replace("?", "%s"), params)
                return await cur.fetchall() if cur.description else None

            try:
                await backend.migrate()
                await kv_run(series, backend, "postgres", RawKV(raw), n)
            finally:
                await conn.close()
                await backend.aclose()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one short run")
    parser.add_argument("--no-postgres", action="store_true")
    anyio.run(main, parser.parse_args(), backend="asyncio")
