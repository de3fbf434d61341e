"""The platform's egress resolver over real stores: proxy credentials, grants, injection, OAuth refresh."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openma import Platform
from openma.core.egress import EgressRefreshFailed, EgressResolverImpl, host_matches
from openma.core.ids import new_id
from openma.core.secrets import KeyRing
from openma.platform import TenantScope
from tests.fakes._serve import ServedApp

pytestmark = pytest.mark.anyio

ROOT = "test-root-secret-0123456789abcdef"
OLD = "old-root-secret-0123456789abcdefgh"
TOKEN = "ghp_static_token_0123456789"


class TokenEndpoint:
    """An OAuth token endpoint that counts refresh calls and rotates the refresh token each time."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.fail = False
        self._lock = threading.Lock()

    async def token(self, request: Request) -> JSONResponse:
        form = {k: str(v) for k, v in (await request.form()).items()}
        with self._lock:
            self.calls.append(form)
            n = len(self.calls)
        await anyio.sleep(0.05)  # widens the window in which concurrent refreshers overlap
        if self.fail:
            return JSONResponse({"error": "invalid_grant", "echo": form.get("refresh_token")}, status_code=400)
        return JSONResponse({"access_token": f"at-new-{n}", "refresh_token": f"rt-new-{n}", "expires_in": 3600})


@pytest.fixture
def token_endpoint() -> Iterator[tuple[TokenEndpoint, str]]:
    endpoint = TokenEndpoint()
    with ServedApp(Starlette(routes=[Route("/token", endpoint.token, methods=["POST"])])) as served:
        yield endpoint, f"{served.url}/token"


@pytest.fixture
async def oma(engine: str, engine_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    url = f"sqlite:///{engine_url}" if engine == "sqlite" else engine_url
    async with Platform.from_url(url, blob_url=f"file://{tmp_path}/b", root_secret=ROOT) as platform:
        yield platform


def resolver(oma: Platform, **kwargs: Any) -> EgressResolverImpl:
    return EgressResolverImpl(oma.tenant, oma.keys, **kwargs)


async def make_session(
    t: TenantScope,
    networking: dict[str, Any] | None,
    auths: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> tuple[str, list[str]]:
    name = new_id("x")
    agent = await t.agents.create(name=name, model="m")
    config = {"networking": networking} if networking is not None else {}
    env = await t.environments.create(name=name, config=config)
    vault = await t.vaults.create(name=name)
    ids = [(await t.credentials.create(vault_id=vault.id, display_name="c", auth=a)).id for a in auths]
    session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, vault_ids=[vault.id])
    return session.id, ids


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_credentials_grants_and_injection(oma: Platform, anyio_backend: str) -> None:
    a, b = await oma.tenants.create(name="a"), await oma.tenants.create(name="b")
    ta, tb = oma.tenant(a.id), oma.tenant(b.id)
    limited = {"type": "limited", "allowed_hosts": ["api.github.com", "*.example.org:8443"]}
    bearer = {"type": "static_bearer", "token": TOKEN, "hosts": ["api.github.com", "*.corp.io"]}
    keyed = {"type": "static_bearer", "token": "k-0123", "hosts": ["keys.io"], "header": "X-Api-Key: {token}"}
    sa, _ = await make_session(ta, limited, [bearer, keyed])
    sb, _ = await make_session(tb, {"type": "unrestricted"}, [{**bearer, "token": "other-tenant-token"}])
    sc, _ = await make_session(ta, None)
    r = resolver(oma)

    cred_a = r.credential(a.id, sa)
    assert cred_a == r.credential(a.id, sa) and cred_a.startswith(f"{a.id}.{sa}.")
    grant = await r.grant(cred_a)
    assert grant is not None and grant.tenant_id == a.id and grant.session_id == sa
    assert grant.networking == "limited" and grant.allowed_hosts == ("api.github.com", "*.example.org:8443")
    grant_b = await r.grant(r.credential(b.id, sb))
    assert grant_b is not None and grant_b.networking == "unrestricted"
    default = await r.grant(r.credential(a.id, sc))
    assert default is not None and default.networking == "limited" and default.allowed_hosts == ()  # fail closed

    assert await r.inject(grant, "api.github.com", 443) == {"Authorization": f"Bearer {TOKEN}"}
    assert await r.inject(grant, "x.corp.io", 443) == {"Authorization": f"Bearer {TOKEN}"}
    assert await r.inject(grant, "corp.io", 443) == {}
    assert await r.inject(grant, "keys.io", 443) == {"X-Api-Key": "k-0123"}
    assert await r.inject(grant, "pypi.org", 443) == {}
    assert await r.inject(grant_b, "api.github.com", 443) == {"Authorization": "Bearer other-tenant-token"}

    # never across tenants: a's session id under b's tenant (or the reverse) is no credential at all
    forged = f"{b.id}.{sa}.{cred_a.rsplit('.', 1)[1]}"
    for bad in (forged, cred_a[:-1] + ("A" if cred_a[-1] != "A" else "B"), "", "x", "a.b.c", cred_a + ".x"):
        assert await r.grant(bad) is None
    assert await r.grant(KeyRingResolver(oma, "another-root-secret-0123456789").credential(a.id, sa)) is None

    await ta.sessions.unfenced_set_status(sa, "terminated")
    assert await r.grant(cred_a) is None and await r.inject(grant, "api.github.com", 443) == {}
    await ta.sessions.delete(sc)
    assert await r.grant(r.credential(a.id, sc)) is None


def KeyRingResolver(oma: Platform, root: str, previous: tuple[str, ...] = ()) -> EgressResolverImpl:
    return EgressResolverImpl(oma.tenant, KeyRing(root, previous))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_credentials_survive_a_key_rotation(oma: Platform, anyio_backend: str) -> None:
    tenant = await oma.tenants.create(name="a")
    session, _ = await make_session(oma.tenant(tenant.id), {"type": "unrestricted"})
    old = KeyRingResolver(oma, OLD).credential(tenant.id, session)
    rotated = KeyRingResolver(oma, ROOT, (OLD,))
    assert await rotated.grant(old) is not None
    assert rotated.credential(tenant.id, session) != old
    assert await KeyRingResolver(oma, ROOT).grant(old) is None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_lookup_error_raises(oma: Platform, anyio_backend: str) -> None:
    tenant = await oma.tenants.create(name="a")
    session, _ = await make_session(oma.tenant(tenant.id), {"type": "unrestricted"})
    r = resolver(oma)
    credential = r.credential(tenant.id, session)
    await oma.aclose()
    with pytest.raises(Exception):  # noqa: B017 (any error: the proxy refuses on every one)
        await r.grant(credential)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_string_is_no_credential(text: str) -> None:
    r = EgressResolverImpl(lambda _t: None, KeyRing(ROOT))  # type: ignore[arg-type,return-value]
    assert r.verify(text) is None


@given(st.from_regex(r"[a-z][a-z0-9]{0,9}(\.[a-z][a-z0-9]{0,9}){0,3}", fullmatch=True))
def test_wildcards_match_subdomains_only(host: str) -> None:
    assert host_matches(host, host.upper()) and not host_matches(f"*.{host}", host)
    assert host_matches(f"*.{host}", f"a.{host}") and not host_matches(f"*.{host}", f"a{host}")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_mcp_oauth_near_expiry_is_refreshed_once_under_concurrency(
    oma: Platform, anyio_backend: str, token_endpoint: tuple[TokenEndpoint, str]
) -> None:
    endpoint, url = token_endpoint
    tenant = await oma.tenants.create(name="a")
    t = oma.tenant(tenant.id)
    auth = {
        "type": "mcp_oauth",
        "mcp_server_url": "https://mcp.example.com/sse",
        "access_token": "at-old",
        "refresh_token": "rt-old",
        "client_id": "cid",
        "client_secret": "csecret",
        "token_endpoint": url,
        "expires_at": int(time.time()) + 10,
    }
    session, (cred,) = await make_session(t, {"type": "unrestricted"}, [auth])
    # two resolvers stand for two processes: each serialises its own refreshers, the store's CAS the rest
    first, second = resolver(oma), resolver(oma)
    grant = await first.grant(first.credential(tenant.id, session))
    assert grant is not None
    seen: list[dict[str, str]] = []

    async def call(r: EgressResolverImpl) -> None:
        seen.append(dict(await r.inject(grant, "mcp.example.com", 443)))

    async with anyio.create_task_group() as tg:
        for r in (first, first, first, second, second, second):
            tg.start_soon(call, r)
    stored = await t.credentials.reveal(cred)
    assert 1 <= len(endpoint.calls) <= 2  # one per process at most
    assert all(c["refresh_token"] == "rt-old" and c["client_secret"] == "csecret" for c in endpoint.calls)
    assert {s["Authorization"] for s in seen} == {f"Bearer {stored['access_token']}"}  # everyone uses the winner
    assert stored["access_token"].startswith("at-new-") and stored["expires_at"] > time.time() + 3000
    # fresh now: no more calls
    assert await first.inject(grant, "mcp.example.com", 443) == {"Authorization": f"Bearer {stored['access_token']}"}
    assert len(endpoint.calls) <= 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_failed_refresh_is_a_typed_error_without_secrets(
    oma: Platform, anyio_backend: str, token_endpoint: tuple[TokenEndpoint, str]
) -> None:
    endpoint, url = token_endpoint
    endpoint.fail = True
    tenant = await oma.tenants.create(name="a")
    auth = {
        "type": "mcp_oauth",
        "mcp_server_url": "https://mcp.example.com/",
        "access_token": "at-old",
        "refresh_token": "rt-secret-old",
        "token_endpoint": url,
        "expires_at": 0,
    }
    session, _ = await make_session(oma.tenant(tenant.id), {"type": "unrestricted"}, [auth])
    r = resolver(oma)
    grant = await r.grant(r.credential(tenant.id, session))
    assert grant is not None
    with pytest.raises(EgressRefreshFailed) as caught:
        await r.inject(grant, "mcp.example.com", 443)
    assert caught.value.code == "egress_refresh_failed" and "rt-secret" not in str(caught.value)
    assert "rt-secret" not in repr(caught.value.__cause__) and "rt-secret" not in repr(caught.value.__context__)
