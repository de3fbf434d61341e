"""The egress proxy against a real HTTPS upstream on loopback, with real clients: httpx, curl, urllib.

asyncio only: the proxy is anyio code, but httpx's proxy support and the subprocess clients are what is under
test here, and the upstream is a threaded stdlib server, so a second backend would add nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import ssl
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openma.adapters.egress import EgressCA, EgressProxy, proxy_credential
from openma.errors import InvalidInput
from openma.ports.egress import EgressGrant
from tests.fakes.https_upstream import HttpsUpstream

pytestmark = pytest.mark.anyio

CREDENTIAL = "cred-alpha-0123456789"
OTHER = "cred-beta-9876543210"
SECRET = "vault-secret-token-xyz"
SANDBOX_SECRET = "sandbox-own-token-abc"


class FakeResolver:
    """Grants by credential and a header to inject per host; ``fail`` makes either call raise."""

    def __init__(self, grants: Mapping[str, EgressGrant], inject: Mapping[str, Mapping[str, str]]) -> None:
        self.grants = dict(grants)
        self.injections = dict(inject)
        self.fail: str | None = None

    async def grant(self, proxy_credential: str) -> EgressGrant | None:
        if self.fail == "grant":
            raise RuntimeError("store down")
        return self.grants.get(proxy_credential)

    async def inject(self, grant: EgressGrant, host: str, port: int) -> Mapping[str, str]:
        if self.fail == "inject":
            raise RuntimeError("vault down")
        return self.injections.get(f"{grant.session_id}/{host}", {})


class RawTelemetry:
    """Keeps fields unredacted, so a leaked secret would show."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [fields for k, fields in self.events if k == kind]


NAMES = {
    "api.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
    "meta.test": ["169.254.169.254"],
    "rebind.wild.test": ["93.184.216.34", "127.0.0.1"],
    "sub.wild.test": ["127.0.0.1"],
    "meta.wild.test": ["169.254.169.254"],
}


async def resolve(host: str, port: int) -> Sequence[str]:
    if host not in NAMES:
        raise OSError("no such host")
    return NAMES[host]


@pytest.fixture(scope="module")
def upstream() -> Iterator[HttpsUpstream]:
    with HttpsUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def plain_upstream() -> Iterator[HttpsUpstream]:
    with HttpsUpstream(plain=True) as up:
        yield up


@pytest.fixture(scope="module")
def ca() -> EgressCA:
    return EgressCA.generate()


@pytest.fixture
def ca_file(ca: EgressCA, tmp_path: Path) -> str:
    path = tmp_path / "egress-ca.pem"
    path.write_text(ca.cert_pem)
    return str(path)


@pytest.fixture
def resolver() -> FakeResolver:
    grants = {
        CREDENTIAL: EgressGrant("t1", "s1", "limited", ("api.test", "*.wild.test", "meta.test")),
        OTHER: EgressGrant("t2", "s2", "unrestricted", ()),
    }
    inject = {"s1/api.test": {"Authorization": f"Bearer {SECRET}"}}
    return FakeResolver(grants, inject)


@pytest.fixture
def telemetry() -> RawTelemetry:
    return RawTelemetry()


@pytest.fixture
async def proxy(
    resolver: FakeResolver, ca: EgressCA, upstream: HttpsUpstream, telemetry: RawTelemetry
) -> AsyncIterator[EgressProxy]:
    async with EgressProxy(resolver, ca, telemetry=telemetry, upstream_ca=upstream.ca_file, resolve=resolve) as p:
        yield p


def client(proxy: EgressProxy, ca: EgressCA, credential: str | None = CREDENTIAL, **kw: Any) -> httpx.AsyncClient:
    auth = f"openma:{credential}@" if credential else ""
    context = ssl.create_default_context(cadata=ca.cert_pem)
    return httpx.AsyncClient(proxy=f"http://{auth}127.0.0.1:{proxy.port}", verify=context, timeout=20, **kw)


async def test_injects_the_vault_header_and_drops_the_sandboxs_own(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, telemetry: RawTelemetry
) -> None:
    async with client(proxy, ca) as http:
        for _ in range(3):  # several requests over one intercepted tunnel
            r = await http.get(f"https://api.test:{upstream.port}/echo", headers={"Authorization": SANDBOX_SECRET})
            assert r.status_code == 200
            headers = {k.lower(): v for k, v in r.json()["headers"].items()}
            assert headers["authorization"] == f"Bearer {SECRET}"
            assert "proxy-authorization" not in headers
            assert SANDBOX_SECRET not in json.dumps(headers)
    events = telemetry.of("egress.request")
    assert len(events) == 3
    event = events[0]
    assert event["session_id"] == "s1" and event["tenant_id"] == "t1" and event["host"] == "api.test"
    assert event["allowed"] and event["status"] == 200 and event["injected"] == ["Authorization"]
    assert event["method"] == "GET" and event["bytes_down"] > 0 and event["duration_ms"] >= 0
    text = json.dumps(telemetry.events)
    assert SECRET not in text and SANDBOX_SECRET not in text and CREDENTIAL not in text


async def test_another_session_never_gets_the_credential(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream
) -> None:
    seen = len(upstream.requests)
    async with client(proxy, ca, OTHER) as http:  # unrestricted, but api.test is loopback and not named
        r = await http.get(f"http://api.test:{upstream.port}/echo")
        assert r.status_code == 403 and "loopback" in r.text
    assert len(upstream.requests) == seen


@pytest.mark.parametrize("credential", [None, "wrong-credential"])
async def test_missing_or_unknown_credentials_get_407(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, credential: str | None
) -> None:
    async with client(proxy, ca, credential) as http:
        with pytest.raises(httpx.ProxyError, match="407"):
            await http.get(f"https://api.test:{upstream.port}/echo")
        r = await http.get(f"http://api.test:{upstream.port}/echo")
        assert r.status_code == 407 and "proxy-authenticate" in r.headers


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("elsewhere.test", "not on the allowed hosts"),
        ("localhost", "not on the allowed hosts"),
        ("127.0.0.1", "not on the allowed hosts"),
        ("meta.wild.test", "metadata"),  # a wildcard never opens a non-public address
        ("sub.wild.test", "loopback"),
        ("rebind.wild.test", "loopback"),  # DNS rebinding: every answer must pass
    ],
)
async def test_refused_destinations(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, host: str, why: str
) -> None:
    async with client(proxy, ca) as http:
        with pytest.raises(httpx.ProxyError, match="40[03]|502"):
            await http.get(f"https://{host}:{upstream.port}/echo")
        r = await http.get(f"http://{host}:{upstream.port}/echo")
        assert r.status_code in (403, 502)
        assert why in r.text or r.status_code == 502


async def test_unrestricted_still_refuses_loopback_and_metadata(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream
) -> None:
    async with client(proxy, ca, OTHER) as http:
        for host in ("api.test", "meta.test", "127.0.0.1", "169.254.169.254", "[::1]", "localhost"):
            r = await http.get(f"http://{host}:{upstream.port}/echo")
            # httpx writes an IPv6 absolute-form target without brackets: malformed, so a 400
            assert r.status_code in (400, 403, 502), host
            assert any(why in r.text for why in ("egress refused", "could not resolve", "absolute http://"))


async def test_untrusted_upstream_certificate_gets_502(
    resolver: FakeResolver, ca: EgressCA, upstream: HttpsUpstream, telemetry: RawTelemetry
) -> None:
    async with EgressProxy(resolver, ca, telemetry=telemetry, resolve=resolve) as proxy, client(proxy, ca) as http:
        r = await http.get(f"https://api.test:{upstream.port}/echo")
        assert r.status_code == 502 and "not trusted" in r.text
    assert telemetry.of("egress.request")[-1]["status"] == 502


@pytest.mark.parametrize("fail", ["grant", "inject"])
async def test_resolver_errors_refuse(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, resolver: FakeResolver, fail: str
) -> None:
    resolver.fail = fail
    seen = len(upstream.requests)
    async with client(proxy, ca) as http:
        r = await http.get(f"http://api.test:{upstream.port}/echo")
        assert r.status_code == 502 and "lookup failed" in r.text
        if fail == "grant":  # the CONNECT itself is refused
            with pytest.raises(httpx.ProxyError, match="502"):
                await http.get(f"https://api.test:{upstream.port}/echo")
        else:  # the request inside the tunnel is
            r = await http.get(f"https://api.test:{upstream.port}/echo")
            assert r.status_code == 502 and "lookup failed" in r.text
    assert len(upstream.requests) == seen


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT nohostport HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET https://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
        b"BLAH\r\n\r\n",
        b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nContent-Length: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    ],
)
async def test_malformed_requests_are_refused(proxy: EgressProxy, raw: bytes) -> None:
    async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        await stream.send(raw)
        with anyio.fail_after(5):
            reply = b""
            try:
                while chunk := await stream.receive():
                    reply += chunk
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    assert reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.1 407") or reply == b""
    assert b"200" not in reply.split(b"\r\n")[0]


async def test_host_header_must_match_the_tunnel(proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream) -> None:
    async with client(proxy, ca) as http:
        r = await http.get(f"https://api.test:{upstream.port}/echo", headers={"Host": "elsewhere.test"})
        assert r.status_code == 403 and "Host header" in r.text


async def test_bodies_stream_both_ways(proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream) -> None:
    base = f"https://api.test:{upstream.port}"
    async with client(proxy, ca) as http:
        r = await http.get(f"{base}/chunked/300000")
        assert len(r.content) == 300000
        r = await http.post(f"{base}/upload", content=b"y" * 500_000)
        assert r.json()["received"] == 500_000

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"z" * 10_000

        r = await http.post(f"{base}/upload", content=chunks())
        assert r.json()["received"] == 100_000


async def test_plain_http_is_forwarded(
    resolver: FakeResolver, ca: EgressCA, plain_upstream: HttpsUpstream, telemetry: RawTelemetry
) -> None:
    async with EgressProxy(resolver, ca, telemetry=telemetry, resolve=resolve) as proxy, client(proxy, ca) as http:
        for _ in range(2):
            r = await http.get(f"http://api.test:{plain_upstream.port}/echo", headers={"Authorization": "mine"})
            headers = {k.lower(): v for k, v in r.json()["headers"].items()}
            assert headers["authorization"] == f"Bearer {SECRET}"
            assert headers["host"] == f"api.test:{plain_upstream.port}"


@pytest.mark.slow
async def test_a_large_download_keeps_memory_bounded(proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream) -> None:
    size = 256 * 1024 * 1024
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    received = 0
    async with client(proxy, ca) as http, http.stream("GET", f"https://api.test:{upstream.port}/bytes/{size}") as r:
        async for chunk in r.aiter_raw():
            received += len(chunk)
            peak = max(peak, process.memory_info().rss) if received % (16 * 65536) < len(chunk) else peak
    assert received == size
    assert peak - before < 64 * 1024 * 1024  # the body is never held whole


async def test_killing_the_proxy_mid_download_fails_the_client_cleanly(
    resolver: FakeResolver, ca: EgressCA, upstream: HttpsUpstream
) -> None:
    """The proxy runs in the caller's task group (``serve``); cancelling it drops the tunnel mid-body."""
    proxy = EgressProxy(resolver, ca, upstream_ca=upstream.ca_file, resolve=resolve)
    scope = anyio.CancelScope()
    closed = False

    async def run(*, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await proxy.serve(task_status=task_status)

    async with anyio.create_task_group() as group:
        await group.start(run)
        async with client(proxy, ca) as http:
            with anyio.fail_after(20):
                async with http.stream("GET", f"https://api.test:{upstream.port}/bytes/{1 << 30}") as r:
                    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                        async for _ in r.aiter_raw():
                            scope.cancel()
                            closed = True
    assert closed


async def test_curl_and_urllib_through_the_proxy(
    proxy: EgressProxy, ca: EgressCA, ca_file: str, upstream: HttpsUpstream
) -> None:
    url = f"https://api.test:{upstream.port}/echo"
    proxy_url = f"http://openma:{CREDENTIAL}@127.0.0.1:{proxy.port}"
    if shutil.which("curl"):
        done = await anyio.run_process(
            ["curl", "-sS", "--proxy", proxy_url, "--cacert", ca_file, "-H", f"Authorization: {SANDBOX_SECRET}", url]
        )
        headers = {k.lower(): v for k, v in json.loads(done.stdout)["headers"].items()}
        assert headers["authorization"] == f"Bearer {SECRET}"
        refused = await anyio.run_process(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_connect}", "--proxy", proxy_url, "--cacert", ca_file,
             f"https://elsewhere.test:{upstream.port}/"],
            check=False,
        )  # fmt: skip
        assert refused.stdout.strip() == b"403"
    code = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())"
    env = {**os.environ, "HTTPS_PROXY": proxy_url, "SSL_CERT_FILE": ca_file, "NO_PROXY": ""}
    done = await anyio.run_process([sys.executable, "-c", code, url], env=env)
    headers = {k.lower(): v for k, v in json.loads(done.stdout)["headers"].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"


def test_the_ca_round_trips_and_hides_its_key(ca: EgressCA) -> None:
    again = EgressCA.from_pem(ca.cert_pem, ca.key_pem)
    assert again.cert_pem == ca.cert_pem
    assert "PRIVATE" not in repr(ca) and ca.key_pem not in repr(ca)
    with pytest.raises(InvalidInput):
        EgressCA.from_pem("nonsense", "nonsense")
    with pytest.raises(InvalidInput):
        EgressCA.from_pem(ca.cert_pem, EgressCA.generate().key_pem)
    small = EgressCA(again._cert, again._key, cache_size=2)
    for host in ("a.test", "b.test", "c.test", "a.test"):
        small.server_context(host)
    assert small.cached_hosts() == ("c.test", "a.test")
    assert small.server_context("a.test") is small.server_context("a.test")


async def test_a_malformed_injected_header_is_refused(
    proxy: EgressProxy, resolver: FakeResolver, ca: EgressCA, upstream: HttpsUpstream
) -> None:
    bad = "bad\r\nx: y"
    resolver.injections["s1/api.test"] = {"X-Token": bad}  # an invalid header value refuses, never relays
    async with client(proxy, ca) as http:
        r = await http.get(f"https://api.test:{upstream.port}/echo")
        assert r.status_code == 502 and "malformed header" in r.text
        resolver.injections["s1/api.test"] = {}
        r = await http.get(f"https://api.test:{upstream.port}/echo")  # a new tunnel: the refusal closed the old
        assert r.status_code == 200


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=120))
def test_proxy_credentials_parse_any_header(value: bytes) -> None:
    credential = proxy_credential([(b"proxy-authorization", value)])
    assert credential is None or (credential and "openma:" + credential in base64_text(value))


def base64_text(value: bytes) -> str:
    try:
        return base64.b64decode(value.partition(b" ")[2].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""


def test_proxy_credentials() -> None:
    good = b"Basic " + base64.b64encode(b"openma:abc")
    assert proxy_credential([(b"proxy-authorization", good)]) == "abc"
    assert proxy_credential([(b"proxy-authorization", b"Basic " + base64.b64encode(b"other:abc"))]) is None
    assert proxy_credential([(b"proxy-authorization", b"Bearer abc")]) is None
    assert proxy_credential([(b"authorization", good)]) is None
