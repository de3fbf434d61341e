"""Egress proxy benchmark: requests through the proxy next to direct requests, in the same run.

    python bench/egress.py             # 400 warm requests per variant, 256 MiB downloads, 3 runs
    python bench/egress.py --quick     # fewer requests, 32 MiB, one run (a smoke test)

The upstream (a threaded stdlib HTTPS server with its own CA, ``tests/fakes/https_upstream.py``) and the proxy
(``EgressProxy`` with a resolver granting one host, the upstream's CA as ``upstream_ca``) each run in their own
process, so neither competes with the client for the GIL.

* **latency**: p50 / p99 of ``GET /echo`` over one warm httpx connection (direct: TLS to the upstream; proxied:
  one intercepted CONNECT tunnel, every request decided, header-injected and audited). Variants alternate.
* **download MB/s**: ``curl -o /dev/null`` of a streamed body, direct and through the proxy.
"""

from __future__ import annotations

import argparse
import json
import os
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

ROOT = Path(__file__).resolve().parent.parent
HOST = "bench.test"
CREDENTIAL = "bench-credential-0123456789"


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
            return EgressGrant("bench", "s1", "limited", (HOST,)) if proxy_credential == CREDENTIAL else None

        async def inject(self, grant: EgressGrant, host: str, port: int) -> Mapping[str, str]:
            return {"Authorization": "Bearer injected"}

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    async def main() -> None:
        ca = EgressCA.generate()
        (workdir / "proxy-ca.pem").write_text(ca.cert_pem)
        proxy = EgressProxy(Resolver(), ca, upstream_ca=str(workdir / "upstream-ca.pem"), resolve=resolve)
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


def _download(workdir: Path, up_port: int, proxy_port: int, size: int) -> dict[str, float]:
    url = f"https://{HOST}:{up_port}/bytes/{size}"
    common = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}"]
    direct = [*common, "--cacert", str(workdir / "upstream-ca.pem"), "--resolve", f"{HOST}:{up_port}:127.0.0.1", url]
    proxied = [
        *common,
        "--cacert",
        str(workdir / "proxy-ca.pem"),
        "--proxy",
        f"http://openma:{CREDENTIAL}@127.0.0.1:{proxy_port}",
        url,
    ]
    out = {}
    for name, command in (("direct", direct), ("proxy", proxied)):
        done = subprocess.run(command, check=True, capture_output=True)
        out[f"{name}_mb_s"] = float(done.stdout) / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "upstream", "proxy"])
    parser.add_argument("workdir", nargs="?")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.mode == "upstream":
        _serve_upstream(Path(args.workdir))
        return
    if args.mode == "proxy":
        _serve_proxy(Path(args.workdir))
        return
    requests, size, runs = (100, 32 << 20, 1) if args.quick else (400, 256 << 20, 3)
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="openma-bench-egress-") as tmp:
        workdir = Path(tmp)
        upstream = _start("upstream", workdir, "upstream.json")
        proxy = _start("proxy", workdir, "proxy.json")
        try:
            up_port = json.loads((workdir / "upstream.json").read_text())["port"]
            proxy_port = json.loads((workdir / "proxy.json").read_text())["port"]
            results: list[dict[str, float]] = []
            for _ in range(runs):
                result = anyio.run(_latency, workdir, up_port, proxy_port, requests)
                result.update(_download(workdir, up_port, proxy_port, size))
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
    print(f"download MB/s direct {median['direct_mb_s']:.1f} proxy {median['proxy_mb_s']:.1f}")
    print(f"throughput ratio {median['proxy_mb_s'] / median['direct_mb_s']:.2f} (target >= 0.7)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
