"""LocalSubprocess: the sandbox contract on asyncio and trio, then what only a local sandbox can show
(host pids, rlimits, the memory watchdog, the environment allowlist, several sandboxes side by side)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma import Settings, registry
from openma.adapters.sandboxes.local import (
    LocalLimits,
    LocalSandbox,
    LocalSandboxConfig,
    LocalSandboxProvider,
    open_sandbox_provider,
)
from openma.core.workspace import check_tarball, mask_secrets
from openma.errors import ConfigError, InvalidInput, NotFound, SandboxError
from openma.ports.blobs import BlobInfo
from openma.ports.sandbox import ProcessInfo, SandboxSpec, SnapshotRef
from openma.testing.sandbox import SandboxContract, _until

OUTPUT = 64 * 1024
TENANT = "tnt_01m8000000000000000000000a"
SESSION = "ses_01m8000000000000000000000b"
PY = sys.executable


class MemoryBlobs:
    """Just enough of a BlobStore for snapshots: put/get/head/delete with TTL."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, BlobInfo]] = {}

    async def put(self, key: str, data: Any, *, ttl: Any = None, **kw: Any) -> BlobInfo:
        now = datetime.now(UTC)
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        info = BlobInfo(
            key=key,
            size=len(data),
            etag=hashlib.md5(bytes(data)).hexdigest(),
            content_type=kw.get("content_type") or "application/octet-stream",
            metadata=kw.get("metadata") or {},
            created_at=now,
            expires_at=None if seconds is None else now + timedelta(seconds=seconds),
        )
        self.objects[key] = (bytes(data), info)
        return info

    async def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key][0]

    async def head(self, key: str) -> BlobInfo:
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key][1]

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)


def spec(**kw: Any) -> SandboxSpec:
    return SandboxSpec(tenant_id=kw.pop("tenant_id", TENANT), session_id=kw.pop("session_id", SESSION), **kw)


def make_provider(root: Path, *, blobs: Any = None, **config: Any) -> LocalSandboxProvider:
    config.setdefault("output_bytes", OUTPUT)
    config.setdefault("kill_grace", 1.0)
    return LocalSandboxProvider(
        LocalSandboxConfig(root=str(root / "sandboxes"), **config), blobs=blobs if blobs is not None else MemoryBlobs()
    )


@pytest.fixture
def provider(tmp_path: Path) -> LocalSandboxProvider:
    return make_provider(tmp_path)


class TestLocalSandboxContract(SandboxContract):
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
            "trio",
        }
    )
    output_limit = OUTPUT

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def sandbox(self, provider: LocalSandboxProvider) -> AsyncIterator[LocalSandbox]:
        sb = await provider.create(spec())
        yield sb
        await sb.destroy()


# -- local-only ------------------------------------------------------------------------------------------


async def finished(sb: LocalSandbox, process_id: str, deadline: float = 30) -> ProcessInfo:
    async def done() -> ProcessInfo | None:
        info = await sb.process(process_id)
        return info if info.status != "running" else None

    result: ProcessInfo = await _until(done, deadline, "the background process to end")
    return result


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _alive(pid: int) -> bool:
    """Running and not a zombie (orphans may never be reaped where PID 1 does not reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


async def _gone(pid: int, deadline: float = 10) -> None:
    """Wait until ``pid`` has stopped (dead or a zombie); fail after ``deadline`` seconds."""

    async def stopped() -> bool:
        return not _alive(pid)

    await _until(stopped, deadline, f"process {pid} to be stopped")


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


@pytest.fixture
async def sandbox(provider: LocalSandboxProvider) -> AsyncIterator[LocalSandbox]:
    sb = await provider.create(spec())
    yield sb
    await sb.destroy()


@pytest.mark.anyio
class TestLocalOnly:
    async def test_workspace_layout_and_allowlisted_env(
        self, sandbox: LocalSandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-aws-secret")
        monkeypatch.setenv("LANG", "C.UTF-8")
        result = await sandbox.exec("env")
        env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        allowed = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR", "PWD", "OPENMA_SANDBOX_RUN"}
        assert set(env) <= allowed, set(env) - allowed
        assert env["HOME"] == sandbox.workspace
        assert env["PWD"] == sandbox.workspace
        assert env["PATH"] == os.environ["PATH"]
        assert env["TMPDIR"] == os.path.join(os.path.dirname(sandbox.workspace), "tmp")
        assert _exists(env["TMPDIR"])
        assert env["OPENMA_SANDBOX_RUN"].startswith(sandbox.id + ".")
        assert "host-aws-secret" not in result.stdout
        assert (await sandbox.exec("mktemp")).stdout.startswith(env["TMPDIR"] + "/")

    async def test_pass_env_allowlist_is_configurable_but_never_the_root_secret(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError):
            make_provider(tmp_path, pass_env=("PATH", "OPENMA_ROOT_SECRET"))
        provider = make_provider(tmp_path, pass_env=("PATH", "OPENMA_TEST_PASSED"))
        os.environ["OPENMA_TEST_PASSED"] = "passed-through"
        try:
            sb = await provider.create(spec(env={"SPEC_VAR": "from-spec"}))
            result = await sb.exec('printf "%s %s %s" "$OPENMA_TEST_PASSED" "$SPEC_VAR" "${LANG-}"')
            assert result.stdout == "passed-through from-spec C.UTF-8"
            await sb.destroy()
        finally:
            del os.environ["OPENMA_TEST_PASSED"]

    async def test_limits_are_applied_to_every_process(self, tmp_path: Path) -> None:
        import resource

        from openma.adapters.sandboxes._limits import rlimits

        limits = LocalLimits(memory_bytes=256 << 20, cpu_seconds=50, open_files=100, processes=3000)
        sb = await make_provider(tmp_path, limits=limits).create(spec())
        text = (await sb.exec("cat /proc/self/limits")).stdout
        rows = {line[:26].strip(): line[26:].split() for line in text.splitlines()[1:]}
        # What the kernel shows, never above the host's own hard limits (which the children inherit).
        expected = {r: (str(s), str(h)) for r, s, h in rlimits(limits)}
        assert tuple(rows["Max data size"][:2]) == expected[resource.RLIMIT_DATA] == (str(512 << 20),) * 2
        assert tuple(rows["Max cpu time"][:2]) == expected[resource.RLIMIT_CPU]
        assert tuple(rows["Max open files"][:2]) == expected[resource.RLIMIT_NOFILE] == ("100", "100")
        assert tuple(rows["Max processes"][:2]) == expected[resource.RLIMIT_NPROC]
        # Background processes get the same.
        info = await sb.start("cat /proc/self/limits")
        await finished(sb, info.id)
        assert "Max open files            100" in (await sb.logs(info.id))[0]
        too_many = await sb.exec(f"{PY} -c \"[open('/dev/null') for _ in range(200)]\"")
        assert too_many.exit_code == 1
        assert "Too many open files" in too_many.stderr
        await sb.destroy()

    @needs_proc
    async def test_every_shell_spelling_applies_the_same_limits(self, tmp_path: Path) -> None:
        import resource

        from openma.adapters.sandboxes._limits import launcher_for, rlimits

        limits = LocalLimits(memory_bytes=256 << 20, cpu_seconds=50, open_files=100, processes=3000)
        shells = [s for s in ("/bin/sh", shutil.which("bash"), shutil.which("dash")) if s is not None]
        for shell in shells:
            provider = make_provider(tmp_path, limits=limits)
            provider._launch = launcher_for(limits, shell=shell)
            sb = await provider.create(spec())
            text = (await sb.exec("cat /proc/self/limits; exit 7")).stdout
            assert (await sb.exec("exit 7")).exit_code == 7
            assert "Max open files            100                  100" in text, (shell, text)
            assert "Max data size             536870912            536870912" in text, (shell, text)
            rows = {line[:26].strip(): line[26:].split() for line in text.splitlines()[1:]}
            expected = {r: (str(s), str(h)) for r, s, h in rlimits(limits)}
            assert tuple(rows["Max processes"][:2]) == expected[resource.RLIMIT_NPROC], (shell, text)
            assert tuple(rows["Max cpu time"][:2]) == expected[resource.RLIMIT_CPU], (shell, text)
            await sb.destroy()

    def test_a_limit_the_shell_cannot_set_is_a_config_error(self, tmp_path: Path) -> None:
        from openma.adapters.sandboxes._limits import launcher_for

        shell = tmp_path / "no-ulimit-sh"
        shell.write_text("#!/bin/sh\necho 'ulimit: Illegal option -d' >&2\nexit 2\n")
        shell.chmod(0o755)
        with pytest.raises(ConfigError, match="memory_bytes"):
            launcher_for(LocalLimits(memory_bytes=64 << 20, cpu_seconds=0, open_files=0, processes=0), shell=str(shell))
        assert launcher_for(LocalLimits(0, 0, 0, 0), shell=str(shell)).prefix == ""

    async def test_cpu_limit_stops_a_busy_loop(self, tmp_path: Path) -> None:
        sb = await make_provider(tmp_path, limits=LocalLimits(cpu_seconds=1)).create(spec())
        result = await sb.exec("while :; do :; done", timeout=30)
        assert not result.timed_out
        assert result.exit_code in (128 + 24, 137)  # SIGXCPU at the soft limit, SIGKILL at the hard one
        assert not result.oom_killed
        await sb.destroy()

    @needs_proc
    async def test_memory_watchdog_reports_oom(self, tmp_path: Path) -> None:
        sb = await make_provider(tmp_path, limits=LocalLimits(memory_bytes=96 << 20)).create(spec())
        grow = f"{PY} -c \"import time\nb=[]\nwhile True:\n b.append(b'x'*(1<<20))\n time.sleep(0.01)\"; echo after"
        started = time.monotonic()
        result = await sb.exec(grow, timeout=60)
        assert result.oom_killed
        assert result.exit_code == 137
        assert not result.timed_out
        assert time.monotonic() - started < 30
        assert "after" not in result.stdout, "the whole group goes, the shell included"
        # The same for a background process.
        info = await sb.start(grow)
        done = await finished(sb, info.id)
        assert (done.status, done.exit_code) == ("killed", 137)
        await sb.destroy()

    async def test_one_huge_allocation_fails_inside_the_program(self, tmp_path: Path) -> None:
        sb = await make_provider(tmp_path, limits=LocalLimits(memory_bytes=64 << 20)).create(spec())
        result = await sb.exec(f"{PY} -c \"b = b'x' * (400 << 20)\"", timeout=60)
        assert result.exit_code == 1
        assert "MemoryError" in result.stderr
        assert not result.oom_killed
        await sb.destroy()

    @needs_proc
    async def test_timeout_kills_grandchildren_that_ignore_sigterm(self, tmp_path: Path) -> None:
        sb = await make_provider(tmp_path, kill_grace=0.3).create(spec())
        result = await sb.exec(
            "sh -c 'trap \"\" TERM; echo $$ > gc.pid; exec sleep 60' & trap '' TERM; "
            "while [ ! -s gc.pid ]; do sleep 0.01; done; sleep 60",
            timeout=0.5,
        )
        assert result.timed_out
        assert result.exit_code == 137
        await _gone(int(await sb.read_file("gc.pid")))
        await sb.destroy()

    @needs_proc
    @pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid(1)")
    async def test_timeout_finds_processes_that_left_the_session(self, sandbox: LocalSandbox) -> None:
        result = await sandbox.exec(
            "setsid sh -c 'echo $$ > escaped.pid; exec sleep 60' >/dev/null 2>&1 & "
            "while [ ! -s escaped.pid ]; do sleep 0.01; done; sleep 60",
            timeout=0.5,
        )
        assert result.timed_out
        await _gone(int(await sandbox.read_file("escaped.pid")))

    @needs_proc
    async def test_detached_leftovers_live_until_destroy(self, sandbox: LocalSandbox) -> None:
        started = time.monotonic()
        result = await sandbox.exec("sleep 60 >/dev/null 2>&1 & echo $!")
        assert time.monotonic() - started < 5
        pid = int(result.stdout)
        assert _alive(pid)
        # A leftover still holding the command's output is stopped when the command returns.
        held = await sandbox.exec("sleep 60 & echo $!")
        assert not _alive(int(held.stdout))
        await sandbox.destroy()
        assert not _alive(pid)
        assert not _exists(os.path.dirname(sandbox.workspace))

    @needs_proc
    async def test_cancelled_exec_leaves_nothing_running(self, sandbox: LocalSandbox) -> None:
        with anyio.move_on_after(0.5):
            await sandbox.exec("echo $$ > pid; sleep 60")
        pid = int((await sandbox.read_file("pid")).decode())
        assert not _alive(pid)

    async def test_truncation_never_leaves_half_a_secret(self, sandbox: LocalSandbox) -> None:
        secret = "TOPSECRET-" + "z" * 40
        sandbox.set_secrets({"TOK": secret})
        result = await sandbox.exec(
            f"head -c {OUTPUT - 20} /dev/zero | tr '\\000' x; printf %s \"$TOK\"", secrets=["TOK"]
        )
        assert result.truncated
        assert "TOPSECRET" not in result.stdout
        assert result.stdout.endswith("***")

    async def test_bad_inputs(self, sandbox: LocalSandbox) -> None:
        for timeout in (0, -1, float("inf"), float("nan"), True):
            with pytest.raises(InvalidInput):
                await sandbox.exec("true", timeout=timeout)
        for cmd in ("", "  ", "echo \0"):
            with pytest.raises(InvalidInput):
                await sandbox.exec(cmd)
        with pytest.raises(InvalidInput):
            await sandbox.exec("true", env={"BAD NAME": "x"})
        with pytest.raises(InvalidInput):
            await sandbox.exec("true", secrets=["NEVER_SET"])
        with pytest.raises(InvalidInput):
            await sandbox.exec("true", secrets="TOK")
        with pytest.raises(InvalidInput):
            await sandbox.write_file("f.txt", "text, not bytes")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            await sandbox.read_file("")
        with pytest.raises(InvalidInput):
            await sandbox.remove(".", recursive=True)
        await sandbox.write_file("d/f", b"")
        with pytest.raises(InvalidInput):
            await sandbox.remove("d")
        with pytest.raises(InvalidInput):
            await sandbox.read_file("d")
        with pytest.raises(NotFound):
            await sandbox.remove("missing")

    async def test_sandboxes_do_not_see_each_other(self, provider: LocalSandboxProvider) -> None:
        a = await provider.create(spec(session_id="ses_01m8000000000000000000000c"))
        b = await provider.create(spec(session_id="ses_01m8000000000000000000000d"))
        await a.write_file("mine.txt", b"a's")
        assert not await b.exists("mine.txt")
        assert await b.list_files(".") == []
        with pytest.raises(InvalidInput):
            await b.read_file(f"../../{a.id}/workspace/mine.txt")
        assert (await a.exec("pwd")).stdout != (await b.exec("pwd")).stdout
        ref = await a.snapshot()
        with pytest.raises(InvalidInput):
            await (await provider.create(spec(tenant_id="tnt_01m8000000000000000000000e"))).restore(ref)
        await a.destroy()
        assert (await b.exec("echo ok")).stdout == "ok\n"
        await b.destroy()

    async def test_provider_lifecycle(self, provider: LocalSandboxProvider) -> None:
        sb = await provider.create(spec(labels={"team": "blue"}))
        other = await provider.create(spec(session_id="ses_01m8000000000000000000000f"))
        found = await provider.list_labeled({"openma": "1", "team": "blue"})
        assert [i for i, _ in found] == [sb.id]
        assert found[0][1] is not None
        assert {i for i, _ in await provider.list_labeled({"openma_tenant": TENANT})} == {sb.id, other.id}
        assert await provider.attach(sb.id, spec()) is sb
        with pytest.raises(NotFound):
            await provider.attach("sbx_01m8000000000000000000000z", spec())
        with pytest.raises(NotFound):
            await provider.attach("../etc", spec())
        # aclose stops processes but keeps the files, so a later provider can attach.
        await sb.write_file("kept.txt", b"kept")
        info = await sb.start("sleep 60")
        await provider.aclose()
        with pytest.raises(SandboxError):
            await sb.process(info.id)
        again = await provider.attach(sb.id, spec())
        assert again is not sb
        assert await again.read_file("kept.txt") == b"kept"
        await provider.destroy_id(sb.id)
        await provider.destroy_id(sb.id)
        with pytest.raises(NotFound):
            await provider.attach(sb.id, spec())
        await provider.destroy_id(other.id)

    async def test_keepalive_and_reaper(self, provider: LocalSandboxProvider) -> None:
        short = await provider.create(spec(lifetime=0.2))
        kept = await provider.create(spec(lifetime=0.2))
        await kept.keepalive(60)
        await anyio.sleep(0.3)
        assert await provider.reap_expired() == [short.id]
        assert short.closed
        assert (await kept.exec("echo up")).stdout == "up\n"
        await kept.destroy()

    async def test_registry_and_settings(self, tmp_path: Path) -> None:
        factory = registry.sandboxes.load("local")
        assert factory is open_sandbox_provider
        settings = Settings.from_env(
            {
                "OPENMA_LOCAL_SANDBOX_ROOT": str(tmp_path / "viaregistry"),
                "OPENMA_LOCAL_SANDBOX_OUTPUT_BYTES": "123",
                "OPENMA_LOCAL_SANDBOX_OPEN_FILES": "77",
                "OPENMA_LOCAL_SANDBOX_KILL_GRACE": "0.5",
                "OPENMA_LOCAL_SANDBOX_PASS_ENV": "PATH,LANG",
            }
        )
        provider = await factory(settings, blobs=MemoryBlobs())
        assert provider.name == "local"
        assert provider.config.output_bytes == 123
        assert provider.config.limits.open_files == 77
        assert provider.config.kill_grace == 0.5
        assert provider.config.pass_env == ("PATH", "LANG")
        sb = await provider.create(spec())
        assert sb.workspace.startswith(str((tmp_path / "viaregistry").resolve()))
        assert "snapshot" in sb.capabilities
        assert (await sb.exec("ulimit -n")).stdout == "77\n"
        await sb.destroy()
        bare = await (await factory(settings)).create(spec())
        assert "snapshot" not in bare.capabilities
        with pytest.raises(SandboxError):
            await bare.snapshot()
        await bare.destroy()
        off = await factory(
            Settings(
                local_sandbox_root=str(tmp_path / "off"),
                local_sandbox_memory_bytes=0,
                local_sandbox_cpu_seconds=0,
                local_sandbox_open_files=0,
                local_sandbox_processes=0,
            )
        )
        unlimited = await off.create(spec())
        assert not {"resource_limits", "oom_detection"} & unlimited.capabilities
        assert (await unlimited.exec("echo plain")).stdout == "plain\n"
        await unlimited.destroy()


# -- snapshots: integrity and hostile tarballs ------------------------------------------------------------


def _tar(*members: tuple[str, str, bytes | str]) -> bytes:
    """Build a .tgz from ``(kind, name, data-or-linkname)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {
                "sym": tarfile.SYMTYPE,
                "lnk": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "dir": tarfile.DIRTYPE,
            }[kind]
            if isinstance(payload, str):
                info.linkname = payload
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [("file", "/etc/evil", b"x")],
        [("file", "../evil", b"x")],
        [("file", "a/../../evil", b"x")],
        [("sym", "link", "/etc"), ("file", "link/passwd", b"x")],
        [("sym", "link", ".."), ("file", "link/evil", b"x")],
        [("lnk", "hard", "/etc/passwd")],
        [("lnk", "hard", "../outside")],
        [("chr", "dev", b"")],
    ],
)
def test_check_tarball_refuses_escapes(members: list[tuple[str, str, Any]]) -> None:
    with pytest.raises(InvalidInput):
        check_tarball(_tar(*members))


def test_check_tarball_accepts_ordinary_trees() -> None:
    check_tarball(
        _tar(
            ("dir", "./", b""),
            ("file", "./a.txt", b"a"),
            ("sym", "./venv/bin/python", "/usr/bin/python3"),
            ("sym", "./alias", "a.txt"),
            ("lnk", "./b.txt", "a.txt"),
        )
    )
    with pytest.raises(InvalidInput):
        check_tarball(b"not a tarball at all")


@pytest.mark.anyio
async def test_restore_refuses_tampered_or_hostile_snapshots(tmp_path: Path) -> None:
    blobs = MemoryBlobs()
    sb = await make_provider(tmp_path, blobs=blobs).create(spec())
    await sb.write_file("keep.txt", b"original")
    ref = await sb.snapshot()
    data, info = blobs.objects[ref.key]
    blobs.objects[ref.key] = (data[:-1] + bytes([data[-1] ^ 1]), info)
    with pytest.raises(SandboxError):
        await sb.restore(ref)
    hostile = _tar(("sym", "link", "/"), ("file", "link/tmp/openma-evil", b"x"))
    blobs.objects[ref.key] = (hostile, info)
    with pytest.raises(InvalidInput):
        await sb.restore(
            SnapshotRef(
                key=ref.key, size=len(hostile), sha256=hashlib.sha256(hostile).hexdigest(), created_at=ref.created_at
            )
        )
    assert await sb.read_file("keep.txt") == b"original"
    assert [f.path for f in await sb.list_files(".")] == ["keep.txt"]
    with pytest.raises(NotFound):
        await sb.restore(SnapshotRef(key=ref.key + ".gone", size=1, sha256="0" * 64, created_at=ref.created_at))
    await sb.destroy()


def test_mask_secrets() -> None:
    assert mask_secrets("a hunter2 b hunter2", ["hunter2"]) == "a *** b ***"
    assert mask_secrets("abcdef", ["abc", "abcdef"]) == "***"
    assert mask_secrets("nothing", []) == "nothing"
    assert mask_secrets("nothing", [""]) == "nothing"
    assert mask_secrets("x" * 10 + "hunt", ["hunter2"], cut=True) == "x" * 10 + "***"
    assert mask_secrets("x" * 10 + "hunt", ["hunter2"]) == "x" * 10 + "hunt"
    assert mask_secrets("a.b*c", ["."]) == "a***b*c"


@pytest.mark.anyio
class TestSpecialFiles:
    """A FIFO, socket, device or directory is refused by the file API at once, on asyncio and trio."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    async def test_a_fifo_is_refused_quickly_and_left_as_it_was(self, sandbox: LocalSandbox) -> None:
        fifo = os.path.join(sandbox.workspace, "pipe")
        os.mkfifo(fifo)
        os.symlink("pipe", os.path.join(sandbox.workspace, "pipe-link"))
        with anyio.fail_after(10):  # the old code blocked in open() for ever, out of reach of this scope
            for path in ("pipe", "pipe-link"):
                with pytest.raises(InvalidInput, match="FIFO") as read_error:
                    await sandbox.read_file(path)
                assert read_error.value.details["file_type"] == "a FIFO (named pipe)"
                with pytest.raises(InvalidInput, match="FIFO"):
                    await sandbox.write_file(path, b"never written")
            with pytest.raises(InvalidInput, match="not a directory"):
                await sandbox.list_files("pipe")
            listed = {f.path: f for f in await sandbox.list_files(".")}
            assert not listed["pipe"].is_dir
            assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
            assert await sandbox.exists("pipe")
            await sandbox.remove("pipe-link")
            await sandbox.remove("pipe")
            assert not await sandbox.exists("pipe")

    async def test_sockets_directories_and_devices_are_refused(self, sandbox: LocalSandbox) -> None:
        made = await sandbox.exec(
            f"{PY} -c \"import socket; socket.socket(socket.AF_UNIX).bind('sock')\" && mkdir d && echo x > f"
        )
        assert made.exit_code == 0, made
        assert stat.S_ISSOCK(os.lstat(os.path.join(sandbox.workspace, "sock")).st_mode)
        os.symlink("/dev/zero", os.path.join(sandbox.workspace, "zero"))
        cases = {"sock": "socket", "d": "directory"}
        try:  # a device node inside the workspace (needs CAP_MKNOD); /dev/zero would be read for ever
            os.mknod(os.path.join(sandbox.workspace, "zero-node"), 0o600 | stat.S_IFCHR, os.makedev(1, 5))
            cases["zero-node"] = "character device"
        except PermissionError:
            pass
        with anyio.fail_after(10):
            for path, kind in cases.items():
                with pytest.raises(InvalidInput, match=kind):
                    await sandbox.read_file(path)
                with pytest.raises(InvalidInput, match=kind):
                    await sandbox.write_file(path, b"never written")
            with pytest.raises(InvalidInput):  # confinement: the link resolves outside the workspace
                await sandbox.read_file("zero")
            with pytest.raises(InvalidInput):
                await sandbox.write_file("zero", b"x")
            with pytest.raises(InvalidInput, match="regular file, not a directory"):
                await sandbox.list_files("f")
            for path in cases:
                await sandbox.remove(path, recursive=True)
                assert not await sandbox.exists(path)
        assert await sandbox.read_file("f") == b"x\n"

    @needs_proc
    async def test_a_cancel_scope_ends_a_command_blocked_on_a_fifo(self, sandbox: LocalSandbox) -> None:
        os.mkfifo(os.path.join(sandbox.workspace, "pipe"))
        started = time.monotonic()
        with anyio.move_on_after(1) as scope:
            await sandbox.exec("sh -c 'echo $$ > reader.pid; exec cat pipe'", timeout=60)
        assert scope.cancelled_caught
        assert time.monotonic() - started < 10
        reader = int(await sandbox.read_file("reader.pid"))

        async def gone() -> bool:
            return not _alive(reader)

        await _until(gone, 10, "the reader blocked on the FIFO to be stopped")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_background_process_ends_with_the_event_loop_that_started_it(tmp_path: Path, backend: str) -> None:
    """Background processes are supervised by a task of the event loop that called ``start``."""
    provider = make_provider(tmp_path)

    async def start() -> tuple[LocalSandbox, int]:
        sb = await provider.create(spec())
        await sb.start("echo $$ > bg.pid; exec sleep 60")
        text = await _until(lambda: _pid_text(sb), 10, "the background pid")
        return sb, int(text)

    sb, pid = anyio.run(start, backend=backend)

    async def check() -> None:
        await _gone(pid)
        await sb.destroy()

    anyio.run(check, backend=backend)


async def _pid_text(sb: LocalSandbox) -> str | None:
    text = (await sb.read_file("bg.pid")).decode() if await sb.exists("bg.pid") else ""
    return text if text.endswith("\n") else None


def test_process_trees_are_seen_through_psutil() -> None:
    from openma.adapters.sandboxes import _proctree as tree

    env = {"PATH": os.environ.get("PATH", ""), "OPENMA_SANDBOX_RUN": "sbx_tree.1"}
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(tree.marked(tree.RunMarker("sbx_tree.1", exact=True))) < 3:
            assert time.monotonic() < deadline, "the marked processes were not found"
            time.sleep(0.02)
        assert not tree.marked(tree.RunMarker("sbx_tree.11", exact=True))
        assert len(tree.marked(tree.RunMarker("sbx_tree.", exact=False))) == 3
        assert tree.group_rss(proc.pid) > 0
        assert tree.group_alive(proc.pid)
        assert tree.signal_all([], tree.RunMarker("sbx_tree.1", exact=True), 9) == 3  # by the marker alone
        proc.wait(10)
        deadline = time.monotonic() + 10
        while tree.survivors([proc.pid], tree.RunMarker("sbx_tree.1", exact=True)):
            assert time.monotonic() < deadline, "the tree survived SIGKILL"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
