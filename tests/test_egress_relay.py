"""How the egress proxy relays bodies: a ``Content-Length`` body is copied from the upstream socket without h11
parsing, so these check what that must keep: a short body fails the request, and the upstream connection is
reused for the next request of a tunnel only when the response allows it. On asyncio and trio (the proxy
waits on its sockets through anyio)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from openma.adapters.egress import EgressCA, EgressProxy
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


@pytest.fixture
def telemetry() -> RawTelemetry:
    return RawTelemetry()


@pytest.fixture
async def proxy(ca: EgressCA, upstream: HttpsUpstream, telemetry: RawTelemetry) -> AsyncIterator[EgressProxy]:
    grants = {CREDENTIAL: EgressGrant("t1", "s1", "limited", ("api.test",))}
    resolver = FakeResolver(grants, {"s1/api.test": {"Authorization": f"Bearer {SECRET}"}})
    async with EgressProxy(resolver, ca, telemetry=telemetry, upstream_ca=upstream.ca_file, resolve=resolve) as p:
        yield p


@pytest.mark.parametrize("size", [1000, 3 << 20])
async def test_a_short_body_fails_the_request(
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, telemetry: RawTelemetry, size: int
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
    proxy: EgressProxy, ca: EgressCA, upstream: HttpsUpstream, telemetry: RawTelemetry
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
