"""Sandbox benchmark: LocalSubprocess next to raw asyncio subprocesses and raw tar, and the bubblewrap sandbox
next to a raw ``bwrap``, in the same run.

    python bench/sandbox.py            # 1000 execs per variant, a 64 MiB tree, medians of 3 runs
    python bench/sandbox.py --quick    # fewer operations, one run (a smoke test)

What is measured (on asyncio):

* **exec latency**, p50 and p99 of ``true`` and of ``echo hello``: ``LocalSandbox.exec`` with the default
  limits (the ``ulimit`` prefix and the memory watchdog on) and with every limit off, next to a raw
  ``asyncio.create_subprocess_exec("/bin/sh", "-c", cmd, start_new_session=True)`` with both pipes read by
  ``communicate()``: the same process the sandbox starts, without its environment, caps and bookkeeping.
  Variants run interleaved, one operation each in turn, so outside load falls on all of them alike.
* **snapshot / restore MB/s** over a workspace tree (half random bytes, half text, in files of 16 KiB to
  1 MiB): ``sandbox.snapshot()`` (tar -czf inside the sandbox, the bytes read back, sha256, put into a
  ``file://`` blob store) and ``sandbox.restore(ref)`` (get, sha256, every member checked, written back,
  workspace emptied, tar -xzf), next to raw ``tar -czf`` / ``tar -xzf`` of the same tree to a local file.
  MB/s are of the tree's size, not of the tarball.

Ratios are openma / raw: for latency above 1 means openma is slower, for MB/s below 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.adapters.sandboxes.local import LocalLimits, LocalSandboxConfig, LocalSandboxProvider
from openma.ports.sandbox import SandboxSpec

SH = os.path.realpath("/bin/sh")
MIB = 1 << 20
SPEC = SandboxSpec(tenant_id="tnt_00000000000000000000000000", session_id="ses_00000000000000000000000000")


async def raw_exec(cmd: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    await proc.communicate()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def latency(root: Path, n: int) -> list[tuple[str, str, float, float]]:
    with_limits = await LocalSandboxProvider(LocalSandboxConfig(root=str(root / "lim"))).create(SPEC)
    no_limits = await LocalSandboxProvider(
        LocalSandboxConfig(root=str(root / "nolim"), limits=LocalLimits(0, 0, 0, 0))
    ).create(SPEC)
    rows = []
    for cmd in ("true", "echo hello"):

        async def sandboxed(cmd: str = cmd) -> None:
            result = await with_limits.exec(cmd)
            assert result.exit_code == 0

        async def bare(cmd: str = cmd) -> None:
            result = await no_limits.exec(cmd)
            assert result.exit_code == 0

        async def raw(cmd: str = cmd) -> None:
            await raw_exec(cmd)

        variants: dict[str, Callable[[], Awaitable[None]]] = {
            "raw asyncio subprocess": raw,
            "LocalSandbox (limits on)": sandboxed,
            "LocalSandbox (limits off)": bare,
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():  # warm up
            for _ in range(10):
                await fn()
        order = list(variants.items())
        for i in range(n):
            # One op of each variant in turn (the order rotating), so load from outside falls on all alike.
            for name, fn in order[i % 3 :] + order[: i % 3]:
                t = time.perf_counter()
                await fn()
                samples[name].append(time.perf_counter() - t)
        for name, s in samples.items():
            rows.append((cmd, name, pct(s, 0.5), pct(s, 0.99)))
    await with_limits.destroy()
    await no_limits.destroy()
    return rows


def make_tree(path: Path, size: int) -> int:
    rnd = random.Random(7)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(4000)]
    total = 0
    i = 0
    while total < size:
        n = min(rnd.choice([16 << 10, 64 << 10, 256 << 10, MIB]), size - total)
        data = rnd.randbytes(n) if i % 2 else b" ".join(rnd.choice(words) for _ in range(n // 5))[:n]
        target = path / f"d{i % 7}" / f"sub{i % 3}" / f"f{i}.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        total += len(data)
        i += 1
    return total


async def snapshots(root: Path, size: int, rounds: int) -> list[tuple[str, str, float]]:
    blobs = await FsspecBlobStore.open(f"file://{root / 'blobs'}")
    provider = LocalSandboxProvider(LocalSandboxConfig(root=str(root / "snap")), blobs=blobs)
    sb = await provider.create(SPEC)
    tree = make_tree(Path(sb.workspace), size)
    raw_tar = root / "raw.tgz"
    raw_out = root / "raw-out"
    times: dict[tuple[str, str], list[float]] = {}

    def record(op: str, who: str, seconds: float) -> None:
        times.setdefault((op, who), []).append(seconds)

    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(["tar", "-czf", str(raw_tar), "-C", sb.workspace, "."], check=True)
        record("snapshot", "raw tar -czf", time.perf_counter() - t)
        shutil.rmtree(raw_out, ignore_errors=True)
        raw_out.mkdir()
        t = time.perf_counter()
        subprocess.run(["tar", "-xzf", str(raw_tar), "-C", str(raw_out)], check=True)
        record("restore", "raw tar -xzf", time.perf_counter() - t)

        t = time.perf_counter()
        ref = await sb.snapshot()
        record("snapshot", "LocalSandbox.snapshot", time.perf_counter() - t)
        t = time.perf_counter()
        await sb.restore(ref)
        record("restore", "LocalSandbox.restore", time.perf_counter() - t)
        await blobs.delete(ref.key)
    await sb.destroy()
    await blobs.aclose()
    return [(op, who, tree / MIB / statistics.median(s)) for (op, who), s in times.items()]


async def one_run(
    n: int, size: int, rounds: int
) -> tuple[list[tuple[str, str, float, float]], list[tuple[str, str, float]]]:
    with tempfile.TemporaryDirectory(prefix="openma-bench-sandbox-") as tmp:
        root = Path(tmp)
        return await latency(root, n), await snapshots(root, size, rounds)


async def main(args: argparse.Namespace) -> None:
    n, size, runs, rounds = (200, 8 * MIB, 1, 2) if args.quick else (1000, 64 * MIB, 3, 3)
    results = [await one_run(n, size, rounds) for _ in range(runs)]
    lat: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rows, _ in results:
        for cmd, who, p50, p99 in rows:
            lat.setdefault((cmd, who), []).append((p50, p99))
    mbs: dict[tuple[str, str], list[float]] = {}
    for _, rows2 in results:
        for op, who, rate in rows2:
            mbs.setdefault((op, who), []).append(rate)

    print(
        f"Sandbox benchmark: medians of {runs} run(s); {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{n} execs per variant, {size // MIB} MiB tree, /bin/sh -> {SH}"
    )
    print()
    print("| command | contender | p50 ms | p99 ms | p50 vs raw |")
    print("|---|---|---:|---:|---:|")
    for cmd in ("true", "echo hello"):
        raw50 = statistics.median(p for p, _ in lat[(cmd, "raw asyncio subprocess")])
        for (c, who), vals in lat.items():
            if c != cmd:
                continue
            p50 = statistics.median(p for p, _ in vals)
            p99 = statistics.median(q for _, q in vals)
            print(f"| `{cmd}` | {who} | {p50:.2f} | {p99:.2f} | {p50 / raw50:.2f}x |")
    print()
    print("| operation | contender | MB/s | vs raw tar |")
    print("|---|---|---:|---:|")
    for op, raw_name in (("snapshot", "raw tar -czf"), ("restore", "raw tar -xzf")):
        raw_rate = statistics.median(mbs[(op, raw_name)])
        for (o, who), vals in mbs.items():
            if o == op:
                rate = statistics.median(vals)
                print(f"| {op} | {who} | {rate:.1f} | {rate / raw_rate:.2f}x |")
    await bwrap_section(n, size, rounds)


# -- bubblewrap ---------------------------------------------------------------------------------------------


async def bwrap_section(n: int, size: int, rounds: int) -> None:
    """``exec("true")`` p50/p99 of BubblewrapSandbox next to LocalSandbox and a raw ``bwrap --unshare-all ...
    true`` started as the same uid (the same namespaces and mounts, without openma's bookkeeping), and its
    snapshot/restore MB/s. Skipped (one line) where bwrap cannot run."""
    from openma.adapters.sandboxes._bwrap_jail import mounts
    from openma.adapters.sandboxes.bubblewrap import BubblewrapSandboxProvider, Jail, host_problem

    jail = Jail()
    problem = host_problem(jail)
    if problem is not None:
        print(f"\nbubblewrap: skipped ({problem})")
        return
    with tempfile.TemporaryDirectory(prefix="openma-bench-bwrap-", dir="/tmp") as tmp:
        root = Path(tmp)
        os.chmod(tmp, 0o711)
        blobs = await FsspecBlobStore.open(f"file://{root / 'blobs'}")
        bw = await BubblewrapSandboxProvider(LocalSandboxConfig(root=str(root / "bw")), blobs=blobs).create(SPEC)
        local = await LocalSandboxProvider(LocalSandboxConfig(root=str(root / "local"))).create(SPEC)
        argv = [
            "bwrap",
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            *mounts(jail, os.path.dirname(bw.workspace)),
            "--chdir",
            "/workspace",
            "/bin/sh",
            "-c",
            "true",
        ]

        async def raw() -> None:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                user=jail.uid,
                group=jail.gid,
                extra_groups=[],
            )
            await proc.communicate()
            assert proc.returncode == 0

        async def in_bwrap() -> None:
            assert (await bw.exec("true")).exit_code == 0

        async def in_local() -> None:
            assert (await local.exec("true")).exit_code == 0

        variants = {"raw bwrap --unshare-all true": raw, "BubblewrapSandbox": in_bwrap, "LocalSandbox": in_local}
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            for _ in range(10):
                await fn()
        order = list(variants.items())
        for i in range(n):
            for name, fn in order[i % 3 :] + order[: i % 3]:
                t = time.perf_counter()
                await fn()
                samples[name].append(time.perf_counter() - t)
        raw50 = pct(samples["raw bwrap --unshare-all true"], 0.5)
        print()
        print("| `true` | contender | p50 ms | p99 ms | p50 vs raw bwrap |")
        print("|---|---|---:|---:|---:|")
        for name, s in samples.items():
            print(f"| `true` | {name} | {pct(s, 0.5):.2f} | {pct(s, 0.99):.2f} | {pct(s, 0.5) / raw50:.2f}x |")
        tree = make_tree(Path(bw.workspace), size)
        await anyio.to_thread.run_sync(lambda: subprocess.run(["chown", "-R", f"{jail.uid}:{jail.gid}", bw.workspace]))
        snap: list[float] = []
        rest: list[float] = []
        for _ in range(rounds):
            t = time.perf_counter()
            ref = await bw.snapshot()
            snap.append(time.perf_counter() - t)
            t = time.perf_counter()
            await bw.restore(ref)
            rest.append(time.perf_counter() - t)
            await blobs.delete(ref.key)
        print()
        print("| operation | contender | MB/s |")
        print("|---|---|---:|")
        print(f"| snapshot | BubblewrapSandbox.snapshot | {tree / MIB / statistics.median(snap):.1f} |")
        print(f"| restore | BubblewrapSandbox.restore | {tree / MIB / statistics.median(rest):.1f} |")
        await bw.destroy()
        await local.destroy()
        await blobs.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations, one run")
    anyio.run(main, parser.parse_args())
