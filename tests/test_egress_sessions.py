"""Sessions through the egress proxy: the platform's CA and supervised proxy, and what a sandbox is given."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketListener, SocketStream, TaskStatus
from cryptography import x509

from openma.adapters.sandboxes.local import LocalSandboxConfig, LocalSandboxProvider
from openma.config.egress import EgressConfig
from openma.core.egress import EgressResolverImpl
from openma.core.egress.service import EgressService, derive_ca
from openma.core.orchestrator import SandboxOrchestrator
from openma.core.secrets import KeyRing
from openma.errors import ConfigError
from openma.ports.egress import EgressEndpoint, EgressResolver
from openma.ports.sandbox import SandboxSpec
from openma.ports.telemetry import Telemetry
from openma.testing.sandbox import _until
from tests.test_sandbox_local import MemoryBlobs

pytestmark = pytest.mark.anyio

ROOT = "test-root-secret-0123456789abcdef"
TENANT = "tnt_01m8000000000000000000000a"
SESSION = "ses_01m8000000000000000000000b"


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        self.seen.append((kind, fields))


class LineProxy:
    """A stand-in proxy with a real listener: answers each connection with one line, can be killed."""

    instances: list[LineProxy] = []
    listening: anyio.Event | None = None

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.listener: SocketListener | None = None
        LineProxy.instances.append(self)

    async def serve(self, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        self.listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self.port = self.listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        if LineProxy.listening is not None:
            LineProxy.listening.set()

        async def answer(stream: SocketStream) -> None:
            async with stream:
                await stream.send(b"proxy %d\n" % len(LineProxy.instances))

        try:
            await self.listener.serve(answer)
        except (anyio.ClosedResourceError, OSError):
            return  # killed

    async def kill(self) -> None:
        assert self.listener is not None
        await self.listener.aclose()


def line_factory(
    resolver: EgressResolver, cert: str, key: str, upstream: str | None, host: str, port: int, tel: Telemetry
) -> LineProxy:
    return LineProxy(host, port)


async def ask(port: int) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        return await stream.receive()


def service(telemetry: Events, **config: Any) -> EgressService:
    keys = KeyRing(ROOT)
    resolver = EgressResolverImpl(lambda _t: None, keys)  # type: ignore[arg-type,return-value]
    return EgressService(EgressConfig(**config), resolver, keys, line_factory, telemetry, restart_delay=0.01)


def test_the_ca_is_derived_from_the_root_secret() -> None:
    cert_pem, key_pem = derive_ca(KeyRing(ROOT))
    assert derive_ca(KeyRing(ROOT))[1] == key_pem  # the same CA on every start and every host
    assert derive_ca(KeyRing("another-root-secret-0123456789"))[1] != key_pem
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == cert.subject and KeyRing(ROOT).key_id in cert.subject.rfc4514_string()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_proxy_is_restarted_on_its_port_when_it_dies(anyio_backend: str) -> None:
    telemetry = Events()
    LineProxy.instances.clear()
    egress = service(telemetry)
    with pytest.raises(ConfigError, match="not running"):
        egress.endpoint(TENANT, SESSION)
    async with anyio.create_task_group() as tg:
        await egress.start(tg)
        port = egress.port
        assert port and await ask(port) == b"proxy 1\n"
        endpoint = egress.endpoint(TENANT, SESSION)
        assert (endpoint.host, endpoint.port, endpoint.no_proxy) == ("127.0.0.1", port, ())
        assert endpoint.ca_pem == egress.ca_pem and egress.resolver.verify(endpoint.credential) == (TENANT, SESSION)

        LineProxy.listening = anyio.Event()
        await LineProxy.instances[-1].kill()
        with anyio.fail_after(10):
            await LineProxy.listening.wait()
        assert await ask(port) == b"proxy 2\n" and egress.port == port
        assert egress.restarts == 1 and telemetry.seen[-1][0] == "egress.proxy_restart"
        await egress.aclose()
    assert not egress.running
    with pytest.raises(ConfigError):
        egress.endpoint(TENANT, SESSION)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_remote_providers_get_the_advertised_address(anyio_backend: str) -> None:
    egress = service(Events(), advertise_host="proxy.example.net", advertise_port=3128)
    async with anyio.create_task_group() as tg:
        await egress.start(tg)
        remote = egress.endpoint(TENANT, SESSION, provider="e2b")
        assert (remote.host, remote.port) == ("proxy.example.net", 3128) and "localhost" in remote.no_proxy
        local = egress.endpoint(TENANT, SESSION, provider="local")
        assert (local.host, local.port) == ("127.0.0.1", egress.port)
        await egress.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_first_start_that_fails_raises(anyio_backend: str) -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as taken:
        port = taken.extra(anyio.abc.SocketAttribute.local_port)
        egress = service(Events(), listen_port=port)
        async with anyio.create_task_group() as tg:
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: OSError"):
                await egress.start(tg)


ENDPOINT = EgressEndpoint(host="127.0.0.1", port=3128, credential="tnt_x.ses_y.mac", ca_pem="-----CA-----\n")


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalSandboxProvider]:
    provider = LocalSandboxProvider(LocalSandboxConfig(root=str(tmp_path / "sb")), blobs=MemoryBlobs())
    yield provider
    await provider.aclose()


async def test_a_local_sandbox_routes_every_command_through_the_proxy(local: LocalSandboxProvider) -> None:
    sb = await local.create(
        SandboxSpec(tenant_id=TENANT, session_id=SESSION, env={"HTTPS_PROXY": "http://evil:1"}, egress=ENDPOINT)
    )
    script = "import os, json; print(json.dumps(dict(os.environ)))"
    result = await sb.exec(f"{sys.executable} -c '{script}'", env={"HTTP_PROXY": "http://evil:2"})
    env = __import__("json").loads(result.stdout)
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == env["https_proxy"] == ENDPOINT.url()
    ca_file = env["SSL_CERT_FILE"]
    assert env["CURL_CA_BUNDLE"] == env["REQUESTS_CA_BUNDLE"] == env["NODE_EXTRA_CA_CERTS"] == ca_file
    assert await anyio.Path(ca_file).read_text() == ENDPOINT.ca_pem
    assert not Path(ca_file).is_relative_to(sb.workspace)
    assert (await sb.exec(f"cat {ca_file}")).stdout == ENDPOINT.ca_pem  # readable by the sandbox's commands
    ref = await sb.snapshot()
    assert b"-----CA-----" not in await local.blobs.get(ref.key)  # type: ignore[union-attr]
    plain = await local.create(SandboxSpec(tenant_id=TENANT, session_id=SESSION))
    out = (await plain.exec("env")).stdout
    assert "HTTPS_PROXY" not in out and "SSL_CERT_FILE" not in out  # no platform, no egress: as before


async def test_the_orchestrator_gives_new_sandboxes_the_sessions_endpoint(local: LocalSandboxProvider) -> None:
    orchestrator = SandboxOrchestrator(local, MemoryBlobs())  # type: ignore[arg-type]
    asked: list[tuple[str, str]] = []

    def endpoint(tenant_id: str, session_id: str) -> EgressEndpoint:
        asked.append((tenant_id, session_id))
        return ENDPOINT

    orchestrator.egress = endpoint
    sb = await orchestrator.get(TENANT, SESSION, SandboxSpec(tenant_id=TENANT, session_id=SESSION))
    assert asked == [(TENANT, SESSION)]
    assert "HTTPS_PROXY=http://openma:tnt_x.ses_y.mac@127.0.0.1:3128" in (await sb.exec("env")).stdout

    def refuse(tenant_id: str, session_id: str) -> EgressEndpoint:
        raise ConfigError("the egress proxy is not running")

    orchestrator.egress = refuse
    other = "ses_01m8000000000000000000000c"
    with pytest.raises(ConfigError):  # fail closed: no sandbox without its proxy
        await orchestrator.get(TENANT, other)
    await orchestrator.aclose()


REMOTE = EgressEndpoint(host="203.0.113.7", port=3128, credential="tnt_x.ses_y.mac", ca_pem="-----CA-----\n")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("which", ["e2b", "daytona"])
async def test_remote_sandboxes_get_the_proxy_the_ca_and_the_providers_own_wall(
    which: str, request: pytest.FixtureRequest, anyio_backend: str
) -> None:
    from openma import registry

    running = request.getfixturevalue(f"{which}_fake")
    provider = await registry.sandboxes.load(which)(running.settings(), blobs=MemoryBlobs())
    try:
        sb = await provider.create(SandboxSpec(tenant_id=TENANT, session_id=SESSION, egress=REMOTE))
        body = running.fake.created[-1]
        if which == "e2b":
            assert body["allow_internet_access"] is False
            assert body["network"] == {"allowOut": ["203.0.113.7"], "denyOut": ["0.0.0.0/0"]}
        else:
            assert body["networkAllowList"] == "203.0.113.7/32" and body["networkBlockAll"] is False
        out = (await sb.exec("env", env={"HTTPS_PROXY": "http://evil:1"})).stdout
        assert "HTTPS_PROXY=http://openma:tnt_x.ses_y.mac@203.0.113.7:3128" in out
        assert f"SSL_CERT_FILE={sb.egress_ca_file}" in out and not sb.egress_ca_file.startswith(sb.workdir)
        assert (await sb.exec(f"cat {sb.egress_ca_file}")).stdout == REMOTE.ca_pem
        await sb.destroy()
        plain = await provider.create(SandboxSpec(tenant_id=TENANT, session_id=SESSION))
        body = running.fake.created[-1]
        assert not {"allow_internet_access", "network", "networkAllowList"} & {
            k for k, v in body.items() if v not in (None, False)
        }
        assert "HTTPS_PROXY" not in (await plain.exec("env")).stdout
        await plain.destroy()
    finally:
        await provider.aclose()


async def test_egress_test_shows_the_decision_and_header_names_only(tmp_path: Path) -> None:
    import os
    import subprocess

    from openma import Platform, Settings

    env = {
        **os.environ,
        "OPENMA_SQLITE_PATH": str(tmp_path / "cli.db"),
        "OPENMA_BLOB_URL": f"file://{tmp_path}/b",
        "OPENMA_ROOT_SECRET": ROOT,
    }
    async with Platform.open(Settings.from_env(env)) as oma:
        tenant = await oma.tenants.create(name="cli")
        t = oma.tenant(tenant.id)
        agent = await t.agents.create(name="a", model="m")
        networking = {"type": "limited", "allowed_hosts": ["127.0.0.1", "*.example.com"]}
        environment = await t.environments.create(name="e", config={"networking": networking})
        vault = await t.vaults.create(name="v")
        auth = {"type": "static_bearer", "token": "tok-secret-0123456789", "hosts": ["127.0.0.1"]}
        await t.credentials.create(vault_id=vault.id, display_name="c", auth=auth)
        session = await t.sessions.create(agent_id=agent.id, environment_id=environment.id, vault_ids=[vault.id])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "openma", "egress", "test", *args], env=env, capture_output=True, text=True
        )

    allowed = run("--session", session.id, "https://127.0.0.1:8443/x")
    assert allowed.returncode == 0, allowed.stderr
    assert "ALLOWED: allowed by exact entry" in allowed.stdout and "headers injected: Authorization" in allowed.stdout
    assert "tok-secret" not in allowed.stdout + allowed.stderr and "networking limited" in allowed.stdout
    refused = run("--tenant", tenant.id, "--session", session.id, "https://pypi.org/simple")
    assert refused.returncode == 1 and "REFUSED: pypi.org:443 is not on the allowed hosts" in refused.stdout
    assert "headers injected: none" in refused.stdout
    missing = run("--session", "ses_01m8000000000000000000000z", "https://pypi.org/")
    assert missing.returncode == 2 and "not_found" in missing.stderr
    assert run("--session", session.id, "ftp://x").returncode == 2


# -- end to end: a platform, its proxy, a real HTTPS upstream, curl and urllib in a LocalSubprocess sandbox

TOKEN_A = "tok-vault-a-0123456789abcdef"
TOKEN_B = "tok-vault-b-0123456789abcdef"
SANDBOX_OWN = "Bearer sandbox-own-value-0123"
URLLIB = (
    "import urllib.request,sys; r=urllib.request.Request(sys.argv[1], headers={'Authorization': sys.argv[2]}); "
    "sys.stdout.write(str(urllib.request.urlopen(r).status))"
)


@pytest.fixture(scope="module")
def upstream() -> Any:
    from tests.fakes.https_upstream import HttpsUpstream

    with HttpsUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def untrusted() -> Any:
    from tests.fakes.https_upstream import HttpsUpstream

    with HttpsUpstream() as up:
        yield up


def received(upstream: Any, path: str) -> dict[str, str]:
    """The headers (lowercased names) of the upstream's last request for ``path``."""
    hits = [r for r in upstream.requests if r["path"] == path]
    assert hits, f"the upstream never saw {path}"
    return {k.lower(): v for k, v in hits[-1]["headers"].items()}


async def open_session(t: Any, networking: dict[str, Any], token: str | None) -> str:
    from openma.core.ids import new_id

    name = new_id("x")
    agent = await t.agents.create(name=name, model="m")
    environment = await t.environments.create(name=name, config={"networking": networking})
    vault_ids = []
    if token is not None:
        vault = await t.vaults.create(name=name)
        auth = {"type": "static_bearer", "token": token, "hosts": ["127.0.0.1"]}
        await t.credentials.create(vault_id=vault.id, display_name="c", auth=auth)
        vault_ids = [vault.id]
    session = await t.sessions.create(agent_id=agent.id, environment_id=environment.id, vault_ids=vault_ids)
    return str(session.id)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sessions_reach_the_upstream_only_through_the_proxy(
    engine: str, engine_url: str, tmp_path: Path, upstream: Any, untrusted: Any, anyio_backend: str
) -> None:
    from openma import Platform

    url = f"sqlite:///{engine_url}" if engine == "sqlite" else engine_url
    settings = {
        "blob_url": f"file://{tmp_path}/b",
        "root_secret": ROOT,
        "local_sandbox_root": str(tmp_path / "sb"),
        "egress_upstream_ca": upstream.ca_file,
    }
    base = f"https://127.0.0.1:{upstream.port}"
    async with Platform.from_url(url, **settings) as oma:
        tenant = await oma.tenants.create(name="e")
        t = oma.tenant(tenant.id)
        limited = {"type": "limited", "allowed_hosts": ["127.0.0.1"]}
        sa = await open_session(t, limited, TOKEN_A)
        sb_id = await open_session(t, limited, TOKEN_B)
        sopen = await open_session(t, {"type": "unrestricted"}, None)
        async with t.sessions.actor(sa) as actor_a, t.sessions.actor(sb_id) as actor_b:
            a, b = await actor_a.sandbox(), await actor_b.sandbox()
            assert oma.egress is not None and oma.egress.running

            # curl and urllib reach the upstream; it sees the vault's header, never the sandbox's own
            done = await a.exec(
                f"curl -sS -o /dev/null -w '%{{http_code}}' -H 'Authorization: {SANDBOX_OWN}' {base}/bytes/11"
            )
            assert done.stdout == "200", done.stderr
            assert received(upstream, "/bytes/11")["authorization"] == f"Bearer {TOKEN_A}"
            assert "proxy-authorization" not in received(upstream, "/bytes/11")
            done = await a.exec(f"python3 -c \"{URLLIB}\" {base}/bytes/12 '{SANDBOX_OWN}'")
            assert done.stdout == "200", done.stderr
            assert received(upstream, "/bytes/12")["authorization"] == f"Bearer {TOKEN_A}"
            # two sessions with different vaults never get each other's credential
            assert (await b.exec(f"curl -sS -o /dev/null {base}/bytes/13")).exit_code == 0
            assert received(upstream, "/bytes/13")["authorization"] == f"Bearer {TOKEN_B}"

            # refused: a host off the list, a name resolving to loopback, an untrusted upstream certificate
            code = "curl -s -o /dev/null -w '%{http_connect} %{http_code}' "
            assert (await a.exec(f"{code} https://127.0.0.2:{upstream.port}/x")).stdout.startswith("403")
            assert (await a.exec(f"{code} https://localhost:{upstream.port}/x")).stdout.startswith("403")
            assert (await a.exec(f"{code} https://127.0.0.1:{untrusted.port}/x")).stdout.split()[-1] in ("502", "000")
            # a missing or foreign proxy credential
            port = oma.egress.port
            for proxy in (f"http://127.0.0.1:{port}", f"http://openma:{tenant.id}.{sa}.forged@127.0.0.1:{port}"):
                out = await a.exec(f"{code} --proxy {proxy} {base}/bytes/15")
                assert out.stdout.startswith("407"), out.stdout
            assert not [r for r in upstream.requests if r["path"] == "/bytes/15"]

            # nothing secret reached the sandbox: environment, output, workspace
            env = (await a.exec("env")).stdout
            assert TOKEN_A not in env and TOKEN_B not in env and "HTTPS_PROXY=" in env
            await a.exec(f"curl -sS -o fetched.bin {base}/bytes/100")
            listing = (await a.exec("cat fetched.bin; ls -la; grep -r tok- . || true")).stdout
            assert TOKEN_A not in listing

            # killing the proxy mid-download fails the request cleanly, and the proxy comes back
            # A body the upstream sends slowly (about 6 MB/s), so the restart always lands mid-transfer.
            size = 64_000_000
            result: dict[str, Any] = {}

            async def download() -> None:
                result["r"] = await a.exec(f"curl -sS -o /dev/null {base}/slow/{size}", timeout=60)

            async with anyio.create_task_group() as tg:
                tg.start_soon(download)

                async def started() -> bool:
                    return any(r["path"] == f"/slow/{size}" for r in upstream.requests)

                await _until(started, 20, "the download to start")
                await oma.egress.restart()
            assert result["r"].exit_code != 0 and not result["r"].timed_out
            assert (await a.exec(f"curl -sS -o /dev/null -w '%{{http_code}}' {base}/bytes/14")).stdout == "200"
            assert oma.egress.restarts == 1 and oma.egress.port == port

        # the idle snapshots of both sessions hold no token and no CA
        for key in [k async for k in _keys(oma)]:
            data = await oma.blobs.get(key)
            assert TOKEN_A.encode() not in data and TOKEN_B.encode() not in data

        # an unrestricted session still cannot reach loopback
        async with t.sessions.actor(sopen) as actor:
            out = await (await actor.sandbox()).exec(f"curl -s -o /dev/null -w '%{{http_connect}}' {base}/open")
            assert out.stdout == "403"


async def _keys(oma: Any) -> Any:
    cursor = None
    while True:
        page = await oma.blobs.list(prefix="t/", cursor=cursor)
        for info in page:
            yield info.key
        cursor = page.next_cursor
        if cursor is None:
            return
