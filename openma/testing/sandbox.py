"""The contract of a sandbox (:mod:`openma.ports.sandbox`), run against real commands.

Combine ``SandboxContract`` with one async fixture, ``sandbox``, that yields a fresh sandbox (and destroys
it afterwards; the contract destroys some itself, so destroying twice must be fine), and declare what the
adapter claims::

    import pytest
    from openma.testing import SandboxContract

    class TestMySandbox(SandboxContract):
        capabilities = {"background", "separate_stderr", "secrets", "snapshot", "keepalive"}
        output_limit = 1 << 20          # bytes of stdout the adapter keeps

        @pytest.fixture
        async def sandbox(self):
            sb = await provider.create(SandboxSpec(tenant_id="tnt_...", session_id="ses_..."))
            yield sb
            await sb.destroy()

Tests for capabilities the class does not declare are skipped with the reason. The commands are POSIX
``sh`` with coreutils (``sleep``, ``head``, ``tr``, ``wc``, ``ln``, ``env``, ``printf``).

Time: nothing asserts speed. "Did it stop" checks use :attr:`SandboxContract.stop_deadline` (generous, so
a remote provider passes), and "did the grandchild write after the deadline" waits long enough after the
call returned that a surviving grandchild would have written.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any, ClassVar

import anyio
import pytest

from openma.errors import InvalidInput, NotFound, SandboxError
from openma.ports.sandbox import CAPABILITIES, ExecResult, ProcessInfo, Sandbox
from openma.testing._sandbox_files import ALL_BYTES, SandboxFilesContract
from openma.testing.capabilities import check_adapter_agrees, check_requirements, requires

__all__ = ["ALL_BYTES", "SandboxContract"]


async def _until(check: Any, deadline: float, what: str) -> Any:
    """Poll ``check()`` (async) until it returns something truthy, or fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.05)


async def _pid_in(sandbox: Sandbox, path: str) -> int:
    """The pid a command wrote to ``path`` (waiting briefly for it to be written in full)."""

    async def read() -> int | None:
        text = (await sandbox.read_file(path)).decode() if await sandbox.exists(path) else ""
        return int(text) if text.isascii() and text.strip().isdigit() and text.endswith("\n") else None

    pid: int = await _until(read, 15, f"a pid in {path}")
    return pid


async def _none_alive(sandbox: Sandbox, pids: list[int]) -> bool:
    """True when none of ``pids`` is running inside the sandbox (a zombie counts as stopped)."""
    script = " ".join(str(p) for p in pids)
    result = await sandbox.exec(
        f"for p in {script}; do s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1);"
        ' case "$s" in ""|Z|X) ;; *) echo "$p";; esac; done'
    )
    assert result.exit_code == 0, result
    return not result.stdout.split()


@pytest.mark.anyio
class SandboxContract(SandboxFilesContract):
    """Sandbox: exec results, timeouts, output caps, files as bytes, confinement, secrets, background,
    snapshots, keepalive and destroy (the file tests come from :class:`SandboxFilesContract`)."""

    #: What the adapter under test declares (a subset of :data:`openma.ports.sandbox.CAPABILITIES`, plus
    #: ``trio`` when it also runs on trio).
    capabilities: ClassVar[set[str] | frozenset[str]] = frozenset()
    #: Bytes of stdout the adapter keeps before it truncates.
    output_limit: ClassVar[int] = 1 << 20
    #: Seconds a stopped command may take to come back (timeouts, kills).
    stop_deadline: ClassVar[float] = 15.0

    @pytest.fixture(autouse=True)
    def _openma_requirements(self, request: pytest.FixtureRequest) -> None:
        check_requirements(self, request)

    # -- declarations

    async def test_declares_known_capabilities(self, sandbox: Sandbox, request: pytest.FixtureRequest) -> None:
        assert sandbox.capabilities <= set(CAPABILITIES), sandbox.capabilities - set(CAPABILITIES)
        check_adapter_agrees(self, request, sandbox)
        assert isinstance(sandbox.id, str)
        assert sandbox.id

    # -- exec

    async def test_exec_returns_output_and_exit_code(self, sandbox: Sandbox) -> None:
        result = await sandbox.exec("echo hello")
        assert isinstance(result, ExecResult)
        assert result.exit_code == 0
        assert result.ok
        assert result.stdout == "hello\n"
        assert not result.timed_out
        assert not result.truncated
        assert not result.oom_killed
        assert result.duration >= 0

    @pytest.mark.parametrize(("cmd", "code"), [("true", 0), ("false", 1), ("exit 42", 42), ("exit 255", 255)])
    async def test_exit_codes_are_real(self, sandbox: Sandbox, cmd: str, code: int) -> None:
        result = await sandbox.exec(cmd)
        assert result.exit_code == code
        assert result.ok is (code == 0)
        assert not result.timed_out

    @pytest.mark.parametrize(("sig", "code"), [("TERM", 143), ("KILL", 137), ("USR1", 138)])
    async def test_killed_by_signal_is_128_plus_n(self, sandbox: Sandbox, sig: str, code: int) -> None:
        result = await sandbox.exec(f"echo before; kill -{sig} $$; echo after")
        assert result.exit_code == code
        assert "before" in result.stdout
        assert "after" not in result.stdout
        assert not result.oom_killed, "a plain signal is not an out-of-memory kill"
        assert not result.timed_out

    async def test_env_is_per_command(self, sandbox: Sandbox) -> None:
        result = await sandbox.exec('printf "%s|%s" "$FOO" "$BAR"', env={"FOO": "a b c", "BAR": "ünï"})
        assert result.stdout == "a b c|ünï"
        again = await sandbox.exec('printf "%s" "${FOO-unset}"')
        assert again.stdout == "unset"

    async def test_cwd_is_relative_to_the_workspace(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("sub/dir/marker.txt", b"here")
        top = await sandbox.exec("pwd")
        inner = await sandbox.exec("pwd; ls; cat marker.txt", cwd="sub/dir")
        assert inner.exit_code == 0
        lines = inner.stdout.splitlines()
        assert lines[0].rstrip("/") == top.stdout.strip().rstrip("/") + "/sub/dir"
        assert "marker.txt" in lines
        assert inner.stdout.endswith("here")

    async def test_missing_cwd(self, sandbox: Sandbox) -> None:
        with pytest.raises((NotFound, InvalidInput)):
            await sandbox.exec("pwd", cwd="no/such/dir")

    @requires("separate_stderr")
    async def test_stdout_and_stderr_are_separate(self, sandbox: Sandbox) -> None:
        result = await sandbox.exec("echo out; echo err >&2; echo out2")
        assert result.stdout == "out\nout2\n"
        assert result.stderr == "err\n"

    async def test_stderr_is_kept(self, sandbox: Sandbox) -> None:
        result = await sandbox.exec("echo to-stderr >&2; exit 3")
        assert result.exit_code == 3
        assert "to-stderr" in result.stdout + result.stderr

    async def test_unicode_output(self, sandbox: Sandbox) -> None:
        result = await sandbox.exec(r"printf 'h\303\251llo \342\234\223 \360\237\232\200\n'; echo 'ünï ✓'")
        assert result.stdout == "héllo ✓ 🚀\nünï ✓\n"

    async def test_binaryish_output_does_not_break_exec(self, sandbox: Sandbox) -> None:
        result = await sandbox.exec(r"printf 'a\377\376b\000c\200\n'; echo done")
        assert result.exit_code == 0
        assert isinstance(result.stdout, str)
        assert result.stdout.startswith("a")
        assert "done" in result.stdout

    async def test_output_is_capped(self, sandbox: Sandbox) -> None:
        size = 2 * self.output_limit + 4096
        result = await sandbox.exec(f"head -c {size} /dev/zero | tr '\\000' x; echo tail >&2")
        assert result.exit_code == 0
        assert result.truncated
        assert 0 < len(result.stdout.encode()) <= self.output_limit
        assert set(result.stdout) == {"x"}

    async def test_timeout_returns_what_was_printed(self, sandbox: Sandbox) -> None:
        started = time.monotonic()
        result = await sandbox.exec("echo started; sleep 60; echo never", timeout=1)
        assert time.monotonic() - started < self.stop_deadline
        assert result.timed_out
        assert not result.ok
        assert "started" in result.stdout
        assert "never" not in result.stdout

    async def test_timeout_stops_grandchildren(self, sandbox: Sandbox) -> None:
        started = time.monotonic()
        # One grandchild in the background, one double-forked away from the shell; both record their pids.
        result = await sandbox.exec(
            "sh -c 'echo $$ > gc1.pid; exec sleep 60' & (sh -c 'echo $$ > gc2.pid; exec sleep 60' &); "
            "while [ ! -s gc1.pid ] || [ ! -s gc2.pid ]; do sleep 0.01; done; sleep 60",
            timeout=1,
        )
        assert result.timed_out
        assert time.monotonic() - started < self.stop_deadline
        pids = [await _pid_in(sandbox, name) for name in ("gc1.pid", "gc2.pid")]
        await _until(lambda: _none_alive(sandbox, pids), self.stop_deadline, f"grandchildren {pids} to be stopped")
        assert (await sandbox.exec("echo alive")).stdout == "alive\n"

    # -- the host's environment

    async def test_host_environment_does_not_leak(self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
        root = f"root-secret-{uuid.uuid4().hex}"
        other = f"host-only-{uuid.uuid4().hex}"
        monkeypatch.setenv("OPENMA_ROOT_SECRET", root)
        monkeypatch.setenv("OPENMA_CONTRACT_HOST_SENTINEL", other)
        result = await sandbox.exec("env; cat /proc/self/environ 2>/dev/null | tr '\\000' '\\n'")
        seen = result.stdout + result.stderr
        assert root not in seen
        assert other not in seen
        assert "OPENMA_CONTRACT_HOST_SENTINEL" not in seen
        started = await self._background_output(sandbox, "env") if "background" in sandbox.capabilities else ""
        assert root not in started
        assert other not in started

    async def _background_output(self, sandbox: Sandbox, cmd: str, **kw: Any) -> str:
        info = await sandbox.start(cmd, **kw)

        async def finished() -> bool:
            return (await sandbox.process(info.id)).status != "running"

        await _until(finished, self.stop_deadline, f"{cmd!r} to finish")
        out, err = await sandbox.logs(info.id)
        return out + err

    # -- secrets

    @requires("secrets")
    async def test_secrets_reach_only_commands_that_name_them(self, sandbox: Sandbox) -> None:
        value = f"s3cr3t-{uuid.uuid4().hex}"
        sandbox.set_secrets({"API_TOKEN": value, "OTHER_TOKEN": f"other-{uuid.uuid4().hex}"})
        unnamed = await sandbox.exec('printf "%s" "${API_TOKEN-absent}"')
        assert unnamed.stdout == "absent"
        named = await sandbox.exec(
            f'test "$API_TOKEN" = "{value}" && echo reached; printf "%s" "${{OTHER_TOKEN-absent}}"',
            secrets=["API_TOKEN"],
        )
        assert named.stdout == "reached\nabsent"

    @requires("secrets")
    async def test_secret_values_are_masked_everywhere(self, sandbox: Sandbox) -> None:
        value = f"s3cr3t-{uuid.uuid4().hex}"
        sandbox.set_secrets({"API_TOKEN": value})
        named = await sandbox.exec('echo "token=$API_TOKEN"; echo "$API_TOKEN" >&2', secrets=["API_TOKEN"])
        assert value not in named.stdout + named.stderr
        assert "token=***" in named.stdout
        # Printed by a command that never named it (the value came some other way): still masked.
        await sandbox.write_file("leak.txt", value.encode())
        leaked = await sandbox.exec("cat leak.txt; echo; cat leak.txt >&2")
        assert value not in leaked.stdout + leaked.stderr
        assert "***" in leaked.stdout
        if "background" in sandbox.capabilities:
            logs = await self._background_output(
                sandbox, 'echo "bg=$API_TOKEN"; echo "$API_TOKEN" >&2', secrets=["API_TOKEN"]
            )
            assert value not in logs
            assert "***" in logs

    # -- background processes

    @requires("background")
    async def test_background_start_logs_kill(self, sandbox: Sandbox) -> None:
        info = await sandbox.start("echo ready; sleep 60")
        assert isinstance(info, ProcessInfo)
        assert info.status == "running"
        assert info.exit_code is None

        async def ready() -> bool:
            return "ready" in (await sandbox.logs(info.id))[0]

        await _until(ready, self.stop_deadline, "background output")
        assert (await sandbox.process(info.id)).status == "running"
        started = time.monotonic()
        await sandbox.kill(info.id)
        assert time.monotonic() - started < self.stop_deadline
        after = await sandbox.process(info.id)
        assert after.status == "killed"
        await sandbox.kill(info.id)  # idempotent
        assert (await sandbox.process(info.id)).status == "killed"

    @requires("background")
    async def test_background_exit_code_and_logs(self, sandbox: Sandbox) -> None:
        info = await sandbox.start("echo out; echo err >&2; exit 3")

        async def finished() -> ProcessInfo | None:
            p = await sandbox.process(info.id)
            return p if p.status != "running" else None

        done = await _until(finished, self.stop_deadline, "the background process to exit")
        assert done.status == "exited"
        assert done.exit_code == 3
        out, err = await sandbox.logs(info.id)
        if "separate_stderr" in sandbox.capabilities:
            assert (out, err) == ("out\n", "err\n")
        else:
            assert "out" in out
            assert "err" in out + err

    @requires("background")
    async def test_background_env_and_cwd(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("work/here.txt", b"")
        info = await sandbox.start('printf "%s " "$GREETING"; ls', env={"GREETING": "hola"}, cwd="work")

        async def finished() -> bool:
            return (await sandbox.process(info.id)).status != "running"

        await _until(finished, self.stop_deadline, "the background process to exit")
        assert (await sandbox.logs(info.id))[0] == "hola here.txt\n"

    @requires("background")
    async def test_background_kill_stops_children(self, sandbox: Sandbox) -> None:
        info = await sandbox.start("sh -c 'echo $$ > bg-child.pid; exec sleep 60' & echo spawned; sleep 60")

        async def spawned() -> bool:
            return "spawned" in (await sandbox.logs(info.id))[0] and await sandbox.exists("bg-child.pid")

        await _until(spawned, self.stop_deadline, "the background process to start its child")
        child = await _pid_in(sandbox, "bg-child.pid")
        assert not await _none_alive(sandbox, [child]), "the child should be running before the kill"
        await sandbox.kill(info.id)
        await _until(lambda: _none_alive(sandbox, [child]), self.stop_deadline, f"child {child} to be stopped")

    @requires("background")
    async def test_unknown_process_is_not_found(self, sandbox: Sandbox) -> None:
        with pytest.raises(NotFound):
            await sandbox.process("prc_does_not_exist")
        with pytest.raises(NotFound):
            await sandbox.logs("prc_does_not_exist")
        with pytest.raises(NotFound):
            await sandbox.kill("prc_does_not_exist")

    # -- snapshots

    @requires("snapshot")
    async def test_snapshot_modify_restore_round_trip(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("keep.txt", b"v1")
        await sandbox.write_file("bin/all.bin", ALL_BYTES)
        await sandbox.write_file("nested/dir/f.txt", b"deep")
        made = await sandbox.exec("mkdir -p emptydir && ln -s keep.txt link && chmod +x nested/dir/f.txt")
        assert made.exit_code == 0, made
        ref = await sandbox.snapshot()
        assert ref.size > 0
        assert len(ref.sha256) == 64
        assert ref.expires_at is not None
        assert ref.expires_at - ref.created_at >= timedelta(days=6)
        assert not any(f.path.startswith(".openma") for f in await sandbox.list_files("."))

        await sandbox.write_file("keep.txt", b"v2")
        await sandbox.remove("bin", recursive=True)
        await sandbox.remove("nested", recursive=True)
        await sandbox.write_file("new.txt", b"added after the snapshot")
        await sandbox.exec("rmdir emptydir")

        await sandbox.restore(ref)
        assert await sandbox.read_file("keep.txt") == b"v1"
        assert await sandbox.read_file("bin/all.bin") == ALL_BYTES
        assert await sandbox.read_file("nested/dir/f.txt") == b"deep"
        assert not await sandbox.exists("new.txt")
        assert await sandbox.exists("emptydir")
        assert await sandbox.read_file("link") == b"v1"
        assert (await sandbox.exec("test -x nested/dir/f.txt && echo exec")).stdout == "exec\n"
        assert not any(f.path.startswith(".openma") for f in await sandbox.list_files("."))
        # In place: the same sandbox goes on working.
        assert (await sandbox.exec("cat keep.txt")).stdout == "v1"

    @requires("snapshot")
    async def test_snapshot_ttl(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("a.txt", b"a")
        ref = await sandbox.snapshot(ttl=3600)
        assert ref.expires_at is not None
        assert timedelta(minutes=59) <= ref.expires_at - ref.created_at <= timedelta(minutes=61)
        kept = await sandbox.snapshot(ttl=None)
        assert kept.expires_at is None

    # -- lifetime

    @requires("keepalive")
    async def test_keepalive(self, sandbox: Sandbox) -> None:
        await sandbox.keepalive(300)
        assert (await sandbox.exec("echo still")).stdout == "still\n"

    async def test_destroy_is_idempotent_and_final(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("f.txt", b"x")
        await sandbox.destroy()
        await sandbox.destroy()
        with pytest.raises(SandboxError):
            await sandbox.exec("true")
        with pytest.raises(SandboxError):
            await sandbox.read_file("f.txt")
        with pytest.raises(SandboxError):
            await sandbox.write_file("g.txt", b"x")
        with pytest.raises(SandboxError):
            await sandbox.list_files(".")
        with pytest.raises(SandboxError):
            await sandbox.exists("f.txt")

    @requires("background")
    async def test_destroy_stops_background_processes(self, sandbox: Sandbox) -> None:
        info = await sandbox.start("sleep 60")
        assert info.status == "running"
        started = time.monotonic()
        await sandbox.destroy()
        assert time.monotonic() - started < self.stop_deadline
        with pytest.raises(SandboxError):
            await sandbox.process(info.id)
