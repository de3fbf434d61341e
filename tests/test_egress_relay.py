"""How the egress proxy relays bodies: a ``Content-Length`` body is copied from the upstream socket without h11
parsing, so these check what that must keep: a short body fails the request, and the upstream connection is
reused for the next request of a tunnel only when the response allows it. On asyncio and trio (the proxy
waits on its sockets through anyio)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from openma import Settings
from openma.adapters.egress import EgressCA, EgressProxy, open_proxy
from openma.config.egress import EgressConfig
from openma.core.egress.resolver import EgressResolverImpl
from openma.core.egress.service import EgressService
from openma.core.secrets import KeyRing
from openma.errors import ConfigError
from openma.ports.egress import EgressGrant
from tests.fakes.https_upstream import HttpsUpstream
from tests.test_egress_proxy import CREDENTIAL, SECRET, FakeResolver, RawTelemetry, client, resolve

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def upstream() -> Iterator[HttpsUpstream]:
    with HttpsUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def ca() -> EgressCA:
    return EgressCA.generate()


class Telemetry(RawTelemetry):
    """``emitted`` is set by the first event."""

    def __init__(self) -> None:
        super().__init__()
        self.emitted = anyio.Event()

    def emit(self, kind: str, **fields: Any) -> None:
        super().emit(kind, **fields)
        self.emitted.set()


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


@pytest.fixture
async def proxy(ca: EgressCA, upstream: HttpsUpstream, telemetry: Telemetry) -> AsyncIterator[EgressProxy]:
    grants = {CREDENTIAL: EgressGrant("t1", "s1", "limited", ("api.test",))}
    resolver = FakeResolver(grants, {"s1/api.test": {"Authorization": f"Bearer {SECRET}"}})
    async with EgressProxy(resolver, ca, telemetry=telemetry, upstream_ca=upstream.ca_file, resolve=resolve) as p:
        yield p


@pytest.mark.parametrize("size", [1000, 3 << 20])
async def test_a_short_body_fails_the_request(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, telemetry: Telemetry, size: int
) -> None:
    """The upstream announces ``size`` bytes and closes after half: the client sees an incomplete body, never
    a complete-looking one, and the audit says why."""
    received = 0
    async with client(proxy, ca) as http, http.stream("GET", f"https://api.test:{upstream.port}/short/{size}") as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in r.aiter_raw():
                received += len(chunk)
    assert received == size // 2
    [event] = [e for e in telemetry.of("egress.request") if e["method"] == "GET"]
    assert event["reason"] == "the upstream closed the connection mid-body"
    assert event["allowed"] is False and event["status"] == 200 and event["bytes_down"] == size // 2


async def test_one_tunnel_reuses_its_upstream_connection(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, telemetry: Telemetry
) -> None:
    """Bodies of every size and framing, one after another in one tunnel, arrive whole over one upstream
    connection; a response that closes its connection makes the next request open a new one."""
    base = f"https://api.test:{upstream.port}"
    sizes = [0, 1, 100, 70_000, 1 << 20, 5]
    before = len(upstream.requests)
    async with client(proxy, ca) as http:
        for size in sizes:
            r = await http.get(f"{base}/bytes/{size}")
            assert r.status_code == 200 and r.content == b"x" * size
            r = await http.get(f"{base}/chunked/{size}")
            assert r.content == b"x" * size
            r = await http.get(f"{base}/echo")
            headers = {k.lower(): v for k, v in r.json()["headers"].items()}
            assert headers["authorization"] == f"Bearer {SECRET}"
        first = upstream.requests[before:]
        assert len(first) == 3 * len(sizes)
        assert len({request["port"] for request in first}) == 1  # one upstream connection
        r = await http.get(f"{base}/nothing-here")  # the stdlib server closes after an error
        assert r.status_code == 404
        r = await http.get(f"{base}/bytes/{1 << 20}")
        assert len(r.content) == 1 << 20
    ports = [request["port"] for request in upstream.requests[before:]]
    assert ports[-2] == ports[0] and ports[-1] != ports[0]
    events = telemetry.of("egress.request")
    assert [e["method"] for e in events] == ["GET"] * (3 * len(sizes) + 2)
    assert all(e["reason"] == "allowed" for e in events)
    assert [e["bytes_down"] for e in events[: 3 * len(sizes) : 3]] == sizes


@pytest.fixture
async def passthrough(ca: EgressCA, upstream: HttpsUpstream, telemetry: Telemetry) -> AsyncIterator[EgressProxy]:
    """A proxy with ``passthrough`` on: ``open`` is unrestricted with nothing injected, ``inject`` is unrestricted
    with a header injected for ``api.test``, ``limited`` is limited with nothing injected."""
    named = ("api.test", "meta.test")  # loopback and link-local are reachable only when named
    grants = {
        "open": EgressGrant("t1", "open", "unrestricted", named),
        "inject": EgressGrant("t1", "inject", "unrestricted", named),
        "limited": EgressGrant("t1", "limited", "limited", named),
    }
    resolver = FakeResolver(grants, {"inject/api.test": {"Authorization": f"Bearer {SECRET}"}})
    async with EgressProxy(
        resolver, ca, telemetry=telemetry, upstream_ca=upstream.ca_file, resolve=resolve, passthrough=True
    ) as p:
        yield p


def trusting(proxy: EgressProxy, credential: str, ca_pem: str) -> httpx.AsyncClient:
    context = ssl.create_default_context(cadata=ca_pem)
    return httpx.AsyncClient(proxy=f"http://openma:{credential}@127.0.0.1:{proxy.port}", verify=context, timeout=20)


async def test_passthrough_tunnels_unrestricted_hosts_without_injection(
    passthrough: EgressProxy, upstream: HttpsUpstream, telemetry: Telemetry
) -> None:
    """The client sees the upstream's own certificate and its own ``Authorization`` arrives: nothing was
    intercepted. A download arrives whole and the tunnel is audited once with its bytes."""
    async with trusting(passthrough, "open", upstream.ca.cert_pem) as http:
        r = await http.get(f"https://api.test:{upstream.port}/echo", headers={"Authorization": "mine"})
        assert {k.lower(): v for k, v in r.json()["headers"].items()}["authorization"] == "mine"
        r = await http.get(f"https://api.test:{upstream.port}/bytes/{3 << 20}")
        assert r.content == b"x" * (3 << 20)
    with anyio.fail_after(10):  # the tunnel ends (and is audited) once both sides have closed
        await telemetry.emitted.wait()
    [event] = telemetry.of("egress.request")
    assert event["method"] == "CONNECT" and event["allowed"] is True and event["session_id"] == "open"
    assert event["bytes_down"] > 3 << 20 and event["bytes_up"] > 0


@pytest.mark.parametrize("credential", ["inject", "limited"])
async def test_passthrough_never_applies_to_injection_or_limited(
    passthrough: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, telemetry: Telemetry, credential: str
) -> None:
    """With a header to inject, or under ``limited``, the tunnel is intercepted: the client must trust the
    proxy's CA (the upstream's alone fails), and the sandbox's own ``Authorization`` never arrives."""
    url = f"https://api.test:{upstream.port}/echo"
    async with trusting(passthrough, credential, upstream.ca.cert_pem) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)
    async with trusting(passthrough, credential, ca.cert_pem) as http:
        r = await http.get(url, headers={"Authorization": "mine"})
    headers = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert headers.get("authorization") == (f"Bearer {SECRET}" if credential == "inject" else None)
    assert [e["method"] for e in telemetry.of("egress.request") if e["allowed"]] == ["GET"]


async def test_passthrough_keeps_the_policy(passthrough: EgressProxy, upstream: HttpsUpstream) -> None:
    """The destination is still decided on the resolved address: loopback not named, metadata and rebinding
    are refused before any tunnel."""
    async with trusting(passthrough, "open", upstream.ca.cert_pem) as http:
        for host in ("other.test", "meta.wild.test", "rebind.wild.test"):
            with pytest.raises(httpx.ProxyError, match="403"):
                await http.get(f"https://{host}:{upstream.port}/echo")


async def test_passthrough_is_off_by_default(ca: EgressCA, upstream: HttpsUpstream) -> None:
    resolver = FakeResolver({"open": EgressGrant("t1", "open", "unrestricted", ("api.test",))}, {})
    async with (
        EgressProxy(resolver, ca, upstream_ca=upstream.ca_file, resolve=resolve) as proxy,
        trusting(proxy, "open", ca.cert_pem) as http,
    ):
        r = await http.get(f"https://api.test:{upstream.port}/echo", headers={"Authorization": "mine"})
    assert "authorization" not in {k.lower() for k in r.json()["headers"]}


async def test_the_passthrough_setting_reaches_the_platforms_proxy() -> None:
    """``OPENMA_EGRESS_PASSTHROUGH`` is off unless set, and the service hands it to its proxy factory."""
    base = {"OPENMA_ROOT_SECRET": "root-secret-for-egress-tests-0123456789"}
    assert Settings.from_env(base).egress.passthrough is False
    assert Settings.from_env({**base, "OPENMA_EGRESS_PASSTHROUGH": "true"}).egress.passthrough is True
    with pytest.raises(ConfigError, match="OPENMA_EGRESS_PASSTHROUGH"):
        Settings.from_env({**base, "OPENMA_EGRESS_PASSTHROUGH": "sometimes"})
    made: list[EgressProxy] = []

    def factory(*args: Any, passthrough: bool = False) -> EgressProxy:
        made.append(open_proxy(*args, passthrough=passthrough))
        return made[-1]

    keys = KeyRing(base["OPENMA_ROOT_SECRET"])
    for on in (False, True):
        resolver = EgressResolverImpl(lambda _t: None, keys)  # type: ignore[arg-type,return-value]
        egress = EgressService(EgressConfig(passthrough=on), resolver, keys, factory, RawTelemetry())
        async with anyio.create_task_group() as group:
            await egress.start(group)
            await egress.aclose()
        assert made[-1].passthrough is on
