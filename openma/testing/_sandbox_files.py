"""The file half of :class:`openma.testing.SandboxContract`: bytes in and out, listing and removal, and
confinement of every path to the workspace (``..``, absolute paths, symlinks pointing out).

:class:`SandboxFilesContract` is a mixin that ``SandboxContract`` includes; use ``SandboxContract``.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import ClassVar

import pytest

from openma.errors import InvalidInput, NotFound
from openma.ports.sandbox import Sandbox
from openma.testing.capabilities import requires

ALL_BYTES = bytes(range(256))


@pytest.mark.anyio
class SandboxFilesContract:
    """Files as bytes, and path confinement (part of :class:`openma.testing.SandboxContract`)."""

    capabilities: ClassVar[set[str] | frozenset[str]] = frozenset()

    # -- files

    async def test_bytes_round_trip_every_byte_value(self, sandbox: Sandbox) -> None:
        data = ALL_BYTES * 64 + ALL_BYTES[::-1]
        await sandbox.write_file("bin/all.bin", data)
        assert await sandbox.read_file("bin/all.bin") == data
        size = await sandbox.exec("wc -c < bin/all.bin")
        assert size.stdout.strip() == str(len(data))
        digest = await sandbox.exec("sha256sum bin/all.bin || shasum -a 256 bin/all.bin")
        assert hashlib.sha256(data).hexdigest() in digest.stdout
        await sandbox.write_file("empty.bin", b"")
        assert await sandbox.read_file("empty.bin") == b""

    async def test_write_overwrites_and_reads_what_commands_wrote(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("f.txt", b"first version, longer")
        await sandbox.write_file("f.txt", b"second")
        assert await sandbox.read_file("f.txt") == b"second"
        await sandbox.exec(r"printf 'from\000sh' > made.bin")
        assert await sandbox.read_file("made.bin") == b"from\x00sh"

    async def test_write_creates_parents(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("deep/er/still/f.txt", b"x")
        assert await sandbox.exists("deep/er/still")
        listing = await sandbox.list_files("deep/er")
        assert [(f.path.rsplit("/", 1)[-1], f.is_dir) for f in listing] == [("still", True)]
        assert (await sandbox.exec("cat deep/er/still/f.txt")).stdout == "x"

    async def test_missing_file_is_not_found(self, sandbox: Sandbox) -> None:
        with pytest.raises(NotFound):
            await sandbox.read_file("nope.txt")
        with pytest.raises(NotFound):
            await sandbox.read_file("no/such/dir/nope.txt")
        assert not await sandbox.exists("nope.txt")

    async def test_list_remove_exists(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("a.txt", b"1")
        await sandbox.write_file("sub/b.txt", b"22")
        top = {f.path.rstrip("/").rsplit("/", 1)[-1]: f for f in await sandbox.list_files(".")}
        assert {"a.txt", "sub"} <= set(top)
        assert not top["a.txt"].is_dir
        assert top["a.txt"].size == 1
        assert top["sub"].is_dir
        sub = await sandbox.list_files("sub")
        assert [f.path.rsplit("/", 1)[-1] for f in sub] == ["b.txt"]
        assert sub[0].size == 2
        await sandbox.remove("a.txt")
        assert not await sandbox.exists("a.txt")
        await sandbox.remove("sub", recursive=True)
        assert not await sandbox.exists("sub")
        with pytest.raises(NotFound):
            await sandbox.list_files("sub")

    @requires("path_confinement")
    @pytest.mark.parametrize("path", ["../x", "a/../../x", "..", "./../x", "sub/../../../etc/passwd"])
    async def test_dotdot_escapes_are_refused(self, sandbox: Sandbox, path: str) -> None:
        with pytest.raises(InvalidInput):
            await sandbox.read_file(path)
        with pytest.raises(InvalidInput):
            await sandbox.write_file(path, b"escaped")
        with pytest.raises(InvalidInput):
            await sandbox.list_files(path)
        with pytest.raises(InvalidInput):
            await sandbox.exists(path)
        with pytest.raises(InvalidInput):
            await sandbox.remove(path, recursive=True)
        with pytest.raises(InvalidInput):
            await sandbox.exec("pwd", cwd=path)

    @requires("path_confinement")
    async def test_absolute_paths_are_refused(self, sandbox: Sandbox) -> None:
        with pytest.raises(InvalidInput):
            await sandbox.read_file("/etc/passwd")
        target = f"/tmp/openma-contract-{uuid.uuid4().hex}"
        with pytest.raises(InvalidInput):
            await sandbox.write_file(target, b"escaped")
        with pytest.raises(InvalidInput):
            await sandbox.list_files("/")
        with pytest.raises(InvalidInput):
            await sandbox.exec("pwd", cwd="/")
        assert (await sandbox.exec(f"test -e {target} && echo present || echo absent")).stdout == "absent\n"

    @requires("path_confinement")
    async def test_symlink_escapes_are_refused(self, sandbox: Sandbox) -> None:
        name = f"openma-contract-{uuid.uuid4().hex}"
        made = await sandbox.exec("ln -s / rootlink && ln -s .. up && ln -s /etc/passwd pw && mkdir real")
        assert made.exit_code == 0, made
        for path in ("rootlink/etc/passwd", "pw", "up/x"):
            with pytest.raises(InvalidInput):
                await sandbox.read_file(path)
        for path in (f"rootlink/tmp/{name}", f"up/{name}", "pw"):
            with pytest.raises(InvalidInput):
                await sandbox.write_file(path, b"escaped")
        with pytest.raises(InvalidInput):
            await sandbox.list_files("rootlink")
        with pytest.raises(InvalidInput):
            await sandbox.exec("pwd", cwd="up")
        assert (await sandbox.exec(f"test -e ../{name} && echo present || echo absent")).stdout == "absent\n"
        # The links themselves are workspace entries: they can be seen and removed.
        assert await sandbox.exists("rootlink")
        await sandbox.remove("rootlink")
        assert not await sandbox.exists("rootlink")
        assert (await sandbox.exec("test -d /etc && echo still-there")).stdout == "still-there\n"

    @requires("path_confinement")
    async def test_symlinks_inside_the_workspace_work(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("real/f.txt", b"hi")
        await sandbox.exec("ln -s real alias && ln -s real/f.txt direct")
        assert await sandbox.read_file("alias/f.txt") == b"hi"
        assert await sandbox.read_file("direct") == b"hi"
        await sandbox.write_file("alias/g.txt", b"via link")
        assert await sandbox.read_file("real/g.txt") == b"via link"
