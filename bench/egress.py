"""Egress proxy benchmark: requests through the proxy next to direct requests, in the same run.

    python bench/egress.py             # 400 warm requests per variant, 256 MiB downloads, 5 runs (--runs N)
    python bench/egress.py --quick     # fewer requests, 32 MiB, one run (a smoke test)

The upstream (a threaded stdlib HTTPS server with its own CA, ``tests/fakes/https_upstream.py``) and the proxy
(``EgressProxy`` with a resolver granting one host, the upstream's CA as ``upstream_ca``) each run in their own
process, so neither competes with the client for the GIL.

* **latency**: p50 / p99 of ``GET /echo`` over one warm httpx connection (direct: TLS to the upstream; proxied:
  one intercepted CONNECT tunnel, every request decided, header-injected and audited). Variants alternate.
* **download MB/s**: ``curl -o /dev/null`` of a ``Content-Length`` body: direct, through the proxy's
  interception (``mitm``: a ``limited`` session with a header injected) and through its pass-through tunnel
  (``tunnel``: an ``unrestricted`` session with nothing injected, ``passthrough=True``), in rotating order;
  with the CPU seconds the proxy and the upstream processes spent per 256 MiB of each download.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
HOST = "bench.test"
CREDENTIAL = "bench-credential-0123456789"
TUNNEL_CREDENTIAL = "bench-tunnel-credential-0123456789"


def _serve_upstream(workdir: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.fakes.https_upstream import HttpsUpstream

    with HttpsUpstream() as up:
        (workdir / "upstream-ca.pem").write_text(up.ca.cert_pem)
        (workdir / "upstream.json").write_text(json.dumps({"port": up.port}))
        sys.stdin.read()  # until the parent closes our stdin


def _serve_proxy(workdir: Path) -> None:
    from openma.adapters.egress import EgressCA, EgressProxy
    from openma.ports.egress import EgressGrant

    class Resolver:
        async def grant(self, proxy_credential: str) -> EgressGrant | None:
            if proxy_credential == TUNNEL_CREDENTIAL:  # loopback is reachable only when named
                return EgressGrant("bench", "s2", "unrestricted", (HOST,))
            return EgressGrant("bench", "s1", "limited", (HOST,)) if proxy_credential == CREDENTIAL else None

        async def inject(self, grant: EgressGrant, host: str, port: int) -> Mapping[str, str]:
            return {"Authorization": "Bearer injected"} if grant.session_id == "s1" else {}

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    async def main() -> None:
        ca = EgressCA.generate()
        (workdir / "proxy-ca.pem").write_text(ca.cert_pem)
        upstream_ca = str(workdir / "upstream-ca.pem")
        proxy = EgressProxy(Resolver(), ca, upstream_ca=upstream_ca, resolve=resolve, passthrough=True)
        async with proxy:
            (workdir / "proxy.json").write_text(json.dumps({"port": proxy.port}))
            await anyio.to_thread.run_sync(sys.stdin.read)

    anyio.run(main)


def _start(mode: str, workdir: Path, ready: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, __file__, mode, str(workdir)], stdin=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    while not (workdir / ready).exists():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the {mode} did not start")
        time.sleep(0.05)
    return process


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _latency(workdir: Path, up_port: int, proxy_port: int, requests: int) -> dict[str, float]:
    direct_ctx = ssl.create_default_context(cafile=str(workdir / "upstream-ca.pem"))
    proxy_ctx = ssl.create_default_context(cafile=str(workdir / "proxy-ca.pem"))
    proxy_url = f"http://openma:{CREDENTIAL}@127.0.0.1:{proxy_port}"
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    async with (
        httpx.AsyncClient(verify=direct_ctx) as direct,
        httpx.AsyncClient(verify=proxy_ctx, proxy=proxy_url) as proxied,
    ):
        variants = {
            "direct": (direct, f"https://127.0.0.1:{up_port}/echo"),
            "proxy": (proxied, f"https://{HOST}:{up_port}/echo"),
        }
        for client, url in variants.values():  # warm: connections, tunnel, leaf certificate
            for _ in range(5):
                (await client.get(url)).raise_for_status()
        for _ in range(requests):
            for name, (client, url) in variants.items():
                started = time.perf_counter()
                response = await client.get(url)
                times[name].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
    return {
        f"{name}_{label}": _pct(values, q)
        for name, values in times.items()
        for label, q in (("p50", 0.5), ("p99", 0.99))
    }


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _gcm_cpu_per_256mib() -> float:
    """CPU seconds to encrypt and then decrypt 256 MiB with AES-256-GCM in 16 KiB records (OpenSSL, through
    ``cryptography``): the crypto an intercepting proxy cannot avoid per byte (one decryption from the upstream,
    one encryption to the client), with nothing else."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    record = os.urandom(16384)
    nonce = os.urandom(12)
    rounds = 2048  # 32 MiB each way, scaled
    start = time.process_time()
    for _ in range(rounds):
        aead.decrypt(nonce, aead.encrypt(nonce, record, None), None)
    return (time.process_time() - start) * (256 << 20) / (rounds * len(record))


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (only curl finishes during a run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _download(
    workdir: Path, up_port: int, proxy_port: int, size: int, pids: Mapping[str, int], turn: int
) -> dict[str, float]:
    """One download per variant (the order rotates with ``turn``): MB/s, and CPU seconds per 256 MiB of the
    proxy and the upstream processes during it, and of the client (curl)."""
    url = f"https://{HOST}:{up_port}/bytes/{size}"
    common = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}"]
    upstream_ca = ["--cacert", str(workdir / "upstream-ca.pem")]
    variants = {
        "direct": [*common, *upstream_ca, "--resolve", f"{HOST}:{up_port}:127.0.0.1", url],
        "mitm": [
            *common, "--cacert", str(workdir / "proxy-ca.pem"),
            "--proxy", f"http://openma:{CREDENTIAL}@127.0.0.1:{proxy_port}", url,
        ],
        "tunnel": [*common, *upstream_ca, "--proxy", f"http://openma:{TUNNEL_CREDENTIAL}@127.0.0.1:{proxy_port}", url],
    }  # fmt: skip
    names = list(variants)
    names = names[turn % len(names) :] + names[: turn % len(names)]
    out = {}
    scale = (256 << 20) / size
    for name in names:
        before = {role: _cpu(pid) for role, pid in pids.items()}
        client_before = _children_cpu()
        done = subprocess.run(variants[name], check=True, capture_output=True)
        out[f"{name}_client_cpu"] = (_children_cpu() - client_before) * scale
        out[f"{name}_mb_s"] = float(done.stdout) / 1e6
        for role, pid in pids.items():
            out[f"{name}_{role}_cpu"] = (_cpu(pid) - before[role]) * scale
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "upstream", "proxy"])
    parser.add_argument("workdir", nargs="?")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=5, help="runs (medians are reported); default 5")
    args = parser.parse_args()
    if args.mode == "upstream":
        _serve_upstream(Path(args.workdir))
        return
    if args.mode == "proxy":
        _serve_proxy(Path(args.workdir))
        return
    requests, size, runs = (100, 32 << 20, 1) if args.quick else (400, 256 << 20, args.runs)
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="openma-bench-egress-") as tmp:
        workdir = Path(tmp)
        upstream = _start("upstream", workdir, "upstream.json")
        proxy = _start("proxy", workdir, "proxy.json")
        try:
            up_port = json.loads((workdir / "upstream.json").read_text())["port"]
            proxy_port = json.loads((workdir / "proxy.json").read_text())["port"]
            results: list[dict[str, float]] = []
            pids = {"proxy": proxy.pid, "upstream": upstream.pid}
            _download(workdir, up_port, proxy_port, 1 << 20, pids, 0)  # warm: leaf certificate, code paths
            for turn in range(runs):
                result = anyio.run(_latency, workdir, up_port, proxy_port, requests)
                result.update(_download(workdir, up_port, proxy_port, size, pids, turn))
                results.append(result)
        finally:
            for process in (proxy, upstream):
                assert process.stdin is not None
                process.stdin.close()
                process.wait(timeout=10)
    median = {key: statistics.median(r[key] for r in results) for key in results[0]}
    print(f"requests per variant: {requests}, download: {size >> 20} MiB, runs: {runs} (medians)")
    print(f"latency ms   direct p50 {median['direct_p50']:.3f} p99 {median['direct_p99']:.3f}")
    print(f"latency ms   proxy  p50 {median['proxy_p50']:.3f} p99 {median['proxy_p99']:.3f}")
    print(f"added p50 {median['proxy_p50'] - median['direct_p50']:.3f} ms (target <= 2 ms)")
    for name in ("direct", "mitm", "tunnel"):
        ratio = median[f"{name}_mb_s"] / median["direct_mb_s"]
        print(
            f"download {name:6} {median[f'{name}_mb_s']:7.1f} MB/s  {ratio:.2f}x direct  CPU s per 256 MiB: "
            f"proxy {median[f'{name}_proxy_cpu']:.2f} upstream {median[f'{name}_upstream_cpu']:.2f} "
            f"client {median[f'{name}_client_cpu']:.2f}"
        )
    # What the CPU alone allows: every byte costs the client, the upstream and (proxied) the proxy this much
    # CPU; with all of it spread perfectly over the machine's cores, a download can go no faster.
    cores = os.cpu_count() or 1
    ceiling = {
        name: cores * 256 / 1.048576 / sum(median[f"{name}_{role}_cpu"] for role in ("proxy", "upstream", "client"))
        for name in ("direct", "mitm")
    }
    # An ideal intercepting proxy: what the tunnel costs (two TCP connections, the bytes relayed) plus the
    # crypto of both legs, and nothing else.
    gcm = _gcm_cpu_per_256mib()
    ideal = median["tunnel_proxy_cpu"] + gcm
    ideal_ceiling = cores * 256 / 1.048576 / (ideal + median["mitm_upstream_cpu"] + median["mitm_client_cpu"])
    print(
        f"CPU ceiling on {cores} cores: direct {ceiling['direct']:.0f} MB/s, mitm {ceiling['mitm']:.0f} MB/s: "
        f"mitm at most {ceiling['mitm'] / median['direct_mb_s']:.2f}x the measured direct"
    )
    print(
        f"an ideal intercepting proxy (the tunnel's CPU plus AES-256-GCM both ways, {gcm:.2f} s per 256 MiB): "
        f"{ideal:.2f} s per 256 MiB, ceiling {ideal_ceiling:.0f} MB/s, {ideal_ceiling / median['direct_mb_s']:.2f}x "
        "the measured direct"
    )
    ratios = sorted(r["mitm_mb_s"] / r["direct_mb_s"] for r in results)
    print(f"mitm/direct per run: {', '.join(f'{x:.2f}' for x in ratios)} (target >= 0.7: median)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
