"""The bubblewrap sandbox: the sandbox contract, then what isolation must hold (the host's files, other
sessions, processes, network, the unprivileged uid) and a turn of the turn loop running its bash tool in it.

Where bwrap cannot run here the module skips with one reason; with ``OPENMA_REQUIRE_BWRAP=1`` (set by
``.ci/run``) that is a failure instead.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from openma.adapters.sandboxes._config import LocalLimits, LocalSandboxConfig
from openma.adapters.sandboxes.bubblewrap import BubblewrapSandboxProvider, Jail, host_problem
from openma.errors import InvalidInput
from openma.ports.sandbox import Sandbox, SandboxSpec
from openma.testing.sandbox import SandboxContract, _until
from tests.test_sandbox_local import OUTPUT, TENANT, MemoryBlobs

_PROBLEM = host_problem(Jail())
if _PROBLEM is not None:
    if os.environ.get("OPENMA_REQUIRE_BWRAP") == "1":
        raise RuntimeError(f"OPENMA_REQUIRE_BWRAP=1 but the bubblewrap sandbox cannot run here: {_PROBLEM}")
    pytest.skip(f"the bubblewrap sandbox cannot run here: {_PROBLEM}", allow_module_level=True)

UID = 65534
CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root() -> Iterator[Path]:
    """A sandbox root the unprivileged uid can reach (pytest's tmp dirs are mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="openma-bwrap-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def make_provider(root: Path, **config: Any) -> BubblewrapSandboxProvider:
    config.setdefault("output_bytes", OUTPUT)
    config.setdefault("kill_grace", 1.0)
    return BubblewrapSandboxProvider(LocalSandboxConfig(root=str(root / "sandboxes"), **config), blobs=MemoryBlobs())


@pytest.fixture
def provider(root: Path) -> BubblewrapSandboxProvider:
    return make_provider(root)


def spec(session: str = "ses_01m8000000000000000000000b") -> SandboxSpec:
    return SandboxSpec(tenant_id=TENANT, session_id=session)


class TestBubblewrapContract(SandboxContract):
    capabilities = frozenset(
        {
            "background",
            "separate_stderr",
            "secrets",
            "snapshot",
            "keepalive",
            "resource_limits",
            "oom_detection",
            "path_confinement",
            "isolation",
            "trio",
        }
    )
    output_limit = OUTPUT

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def sandbox(self, provider: BubblewrapSandboxProvider) -> AsyncIterator[Sandbox]:
        sb = await provider.create(spec())
        yield sb
        await sb.destroy()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sb(provider: BubblewrapSandboxProvider) -> AsyncIterator[Any]:
    box = await provider.create(spec())
    yield box
    await box.destroy()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


class TestIsolation:
    @pytest.mark.anyio
    async def test_host_home_checkout_and_root_files_are_out_of_reach(self, sb: Any, root: Path) -> None:
        secret = root / "root-only.txt"
        secret.write_text("top secret")
        secret.chmod(0o600)
        checkout = CHECKOUT
        result = await sb.exec(
            f"ls /root; ls {checkout}; cat /etc/shadow; cat {secret}; ls {root}; echo done", timeout=30
        )
        assert "done" in result.stdout
        assert "top secret" not in result.stdout
        assert "root:" not in result.stdout
        assert "/root" in result.stderr and "No such file" in result.stderr
        assert str(checkout) in result.stderr
        assert "shadow: Permission denied" in result.stderr

    @pytest.mark.anyio
    async def test_a_root_only_file_bound_inside_still_cannot_be_read(self, root: Path) -> None:
        secret = root / "bound-secret.txt"
        secret.write_text("top secret")
        secret.chmod(0o600)
        provider = BubblewrapSandboxProvider(
            LocalSandboxConfig(root=str(root / "sandboxes")), jail=Jail(ro_binds=((str(secret), "/secret"),))
        )
        box = await provider.create(spec())
        try:
            result = await box.exec("cat /secret; id -u")
            assert "top secret" not in result.stdout
            assert "Permission denied" in result.stderr
            assert result.stdout.strip() == str(UID)
        finally:
            await box.destroy()

    @pytest.mark.anyio
    async def test_other_sessions_workspaces_do_not_exist_inside(self, provider: BubblewrapSandboxProvider) -> None:
        a = await provider.create(spec("ses_01m8000000000000000000000c"))
        b = await provider.create(spec("ses_01m8000000000000000000000d"))
        try:
            await b.write_file("mine.txt", b"b's data")
            result = await a.exec(f"ls {b.workspace}; find / -name mine.txt 2>/dev/null; echo end")
            assert "mine.txt" not in result.stdout
            assert "No such file" in result.stderr
        finally:
            await a.destroy()
            await b.destroy()

    @pytest.mark.anyio
    async def test_writes_outside_the_workspace_fail(self, sb: Any) -> None:
        for target in ("/usr/x", "/etc/x", "/x", "/proc/x"):
            result = await sb.exec(f"echo hi > {target}")
            assert result.exit_code != 0, target
        ok = await sb.exec("echo hi > /workspace/in.txt && echo hi > /tmp/t.txt && cat /tmp/t.txt")
        assert ok.exit_code == 0 and ok.stdout == "hi\n"

    @pytest.mark.anyio
    async def test_ps_shows_only_the_sandboxs_processes(self, sb: Any) -> None:
        await sb.start("sleep 30")
        result = await sb.exec("ps -eo pid=,args=")
        lines = [line.split(None, 1) for line in result.stdout.strip().splitlines()]
        assert len(lines) <= 8, result.stdout  # the keeper, its sleep, the background command, this one
        assert any("sleep 30" in args for _, args in lines)
        assert all("pytest" not in args and "python" not in args for _, args in lines), result.stdout
        assert min(int(p) for p, _ in lines) == 1

    @pytest.mark.anyio
    async def test_no_network_but_loopback(self, sb: Any) -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            script = (
                "import socket,sys\n"
                "try:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
                "    print('connected')\n"
                "except OSError as e:\n"
                "    print('refused', type(e).__name__)\n"
            )
            await sb.write_file("probe.py", script.encode())
            result = await sb.exec("python3 probe.py; cat /proc/net/dev | tail -n +3 | cut -d: -f1")
        assert "refused" in result.stdout, result
        assert "connected" not in result.stdout
        assert result.stdout.split()[-1] == "lo"
        assert len(result.stdout.strip().splitlines()) == 2

    @pytest.mark.anyio
    async def test_files_written_inside_are_owned_by_the_unprivileged_uid(self, sb: Any) -> None:
        await sb.exec("mkdir -p a/b && echo hi > a/b/c.txt")
        await sb.write_file("from/host.txt", b"x")
        for rel in ("a", "a/b", "a/b/c.txt", "from", "from/host.txt"):
            st = os.lstat(os.path.join(sb.workspace, rel))
            assert (st.st_uid, st.st_gid) == (UID, UID), rel
        again = await sb.exec("echo more >> from/host.txt && cat from/host.txt")
        assert again.stdout == "xmore\n"
        assert stat.S_IMODE(os.stat(sb.workspace).st_mode) == 0o700

    @pytest.mark.anyio
    async def test_a_setsid_daemon_dies_with_a_timeout_and_with_destroy(
        self, provider: BubblewrapSandboxProvider
    ) -> None:
        # Durations no other process on the machine is likely to sleep for, so the checks see only ours.
        first, second = (str(1000 + secrets.randbelow(8000)).encode() for _ in range(2))
        box = await provider.create(spec())
        result = await box.exec(f"setsid sh -c 'sleep {first.decode()}' & sleep {first.decode()}", timeout=1)
        assert result.timed_out

        async def no_sleepers() -> bool:
            return not any(_alive(p) and _is_sleep(p, first) for p in _pids())

        await _until(no_sleepers, 10, "the daemon of the timed-out command to stop")
        await box.exec(f"env -u OPENMA_SANDBOX_RUN setsid sh -c 'sleep {second.decode()}' >/dev/null 2>&1 &")
        await _until(lambda: _async(any(_is_sleep(p, second) for p in _pids())), 10, "the unmarked daemon to start")
        await box.destroy()
        await _until(
            lambda: _async(not any(_alive(p) and _is_sleep(p, second) for p in _pids())), 10, "destroy to kill it"
        )

    @pytest.mark.anyio
    async def test_out_of_memory_is_reported(self, root: Path) -> None:
        provider = make_provider(root, limits=LocalLimits(memory_bytes=64 << 20))
        box = await provider.create(spec())
        try:
            result = await box.exec(
                "python3 -c 'import time; b=[]\nwhile True: b.append(bytearray(8<<20)); time.sleep(0.01)'",
                timeout=60,
            )
            assert result.exit_code == 137
            assert result.oom_killed
        finally:
            await box.destroy()

    @pytest.mark.anyio
    async def test_file_api_is_still_confined(self, sb: Any) -> None:
        await sb.exec("ln -s /etc/passwd leak")
        with pytest.raises(InvalidInput):
            await sb.read_file("leak")
        with pytest.raises(InvalidInput):
            await sb.read_file("/etc/passwd")


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _is_sleep(pid: int, seconds: bytes) -> bool:
    return _cmdline(pid) == b"sleep\0" + seconds + b"\0"


async def _async(value: bool) -> bool:
    await anyio.lowlevel.checkpoint()
    return value


def test_the_registry_knows_bubblewrap() -> None:
    from openma import registry

    assert registry.sandboxes.has("bubblewrap")


@pytest.mark.anyio
async def test_a_turn_runs_its_bash_tool_in_the_bubblewrap_sandbox(root: Path) -> None:
    from openma import Settings
    from openma.testing import ScriptedModel
    from tests.turn_support import open_world, text, tool_use

    settings = Settings(
        sqlite_path=str(root / "openma.db"),
        blob_url=f"file://{root}/blobs",
        local_sandbox_root=str(root / "sandboxes"),
        sandbox="bubblewrap",
    )
    async for world in open_world(settings):
        sid = await world.session()
        await world.say(sid, "who are you")
        model = ScriptedModel([[tool_use("bash", {"command": "id -u; pwd; ls /root 2>&1"})], [text("done")]])
        result = await world.t.sessions.run(sid, model=model)
        assert result.stop_reason == "end_turn"
        (res,) = await world.of(sid, "agent.tool_result")
        lines = res["content"].splitlines()
        assert lines[0] == str(UID) and lines[1] == "/workspace", res
        assert "No such file" in lines[2]


@pytest.mark.anyio
async def test_doctor_says_whether_bubblewrap_can_run(root: Path) -> None:
    from openma import Settings
    from openma.doctor import diagnose

    checks = await diagnose(Settings(sandbox="bubblewrap", local_sandbox_root=str(root / "sandboxes")))
    (check,) = [c for c in checks if c.part == "sandbox bubblewrap"]
    assert check.ok and f"uid {UID}" in check.detail
    missing = host_problem(Jail(bwrap="openma-no-such-bwrap"))
    assert missing is not None and "not installed" in missing and "apt-get install bubblewrap" in missing


def test_a_root_the_uid_cannot_reach_is_a_config_error(tmp_path: Path) -> None:
    from openma.adapters.sandboxes._bwrap_jail import reachable
    from openma.errors import ConfigError

    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not searchable"):
        reachable(str(hidden / "sandboxes"), UID, UID)


# -- egress ------------------------------------------------------------------------------------------------

CA_PEM = "-----BEGIN CERTIFICATE-----\nb3Blbm1hLXRlc3QtY2E=\n-----END CERTIFICATE-----\n"


class ProxyStandIn:
    """A plain HTTP forward proxy stand-in on loopback: it answers every request itself with what it saw
    (the request line and the ``Proxy-Authorization`` header), so a test sees the path a request took."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.port = 0

    async def handle(self, client: Any) -> None:
        async with client:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await client.receive()
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n")[0].decode()
            self.seen.append(head)
            body = b"via the proxy stand-in"
            await client.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )


@pytest.fixture
async def proxy() -> AsyncIterator[ProxyStandIn]:
    stand_in = ProxyStandIn()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    stand_in.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, stand_in.handle)
        yield stand_in
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_egress_goes_through_the_proxy_and_nowhere_else(
    provider: BubblewrapSandboxProvider, proxy: ProxyStandIn
) -> None:
    from openma.ports.egress import EgressEndpoint

    endpoint = EgressEndpoint(host="127.0.0.1", port=proxy.port, credential="cred-123", ca_pem=CA_PEM)
    box = await provider.create(
        SandboxSpec(tenant_id=TENANT, session_id="ses_01m8000000000000000000000e", egress=endpoint)
    )
    try:
        probe = (
            "import os, socket, urllib.request\n"
            "print(urllib.request.urlopen('http://example.test/path').read().decode())\n"
            "print(os.environ['HTTPS_PROXY'].split('@')[1], os.environ['SSL_CERT_FILE'])\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {proxy.port}), timeout=3); print('direct: open')\n"
            "except OSError as e:\n    print('direct: refused')\n"
        )
        await box.write_file("probe.py", probe.encode())
        result = await box.exec("python3 probe.py && tail -c 200 /run/openma/ca-bundle.pem && ls -ln /run/openma")
        assert result.exit_code == 0, result
        lines = result.stdout.splitlines()
        assert lines[0] == "via the proxy stand-in"
        assert lines[1] == "127.0.0.1:3128 /run/openma/ca-bundle.pem"
        assert lines[2] == "direct: refused"
        assert CA_PEM.strip() in result.stdout
        (seen,) = proxy.seen
        assert seen.startswith("GET http://example.test/path HTTP/1.1")
        assert "Proxy-Authorization: Basic" in seen or "proxy-authorization: basic" in seen.lower()
        # The forwarder ends with its command: once the command returned, none of the sandbox's is left.

        def forwarders() -> list[int]:
            found = []
            for pid in _pids():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        env = f.read()
                except OSError:
                    continue
                if _cmdline(pid).startswith(b"python3\0-c\0") and box.id.encode() in env:
                    found.append(pid)
            return found

        await _until(lambda: _async(not forwarders()), 10, "the egress forwarders to end")
    finally:
        await box.destroy()


def test_the_settings_reach_the_jail() -> None:
    from openma import Settings
    from openma.adapters.sandboxes.bubblewrap import jail_from_settings
    from openma.errors import ConfigError

    settings = Settings.from_env({"OPENMA_BUBBLEWRAP_UID": "1234", "OPENMA_BUBBLEWRAP_RO_BINDS": "/opt/a, /opt/b"})
    jail = jail_from_settings(settings)
    assert (jail.uid, jail.gid, jail.rootfs) == (1234, 65534, None)
    assert jail.ro_binds == (("/opt/a", "/opt/a"), ("/opt/b", "/opt/b"))
    with pytest.raises(ConfigError):
        Settings(bubblewrap_uid=0)
    with pytest.raises(ConfigError, match="bad path"):
        Settings(bubblewrap_ro_binds="relative/path")
