"""The namespaces of one bubblewrap sandbox: its keeper, the ``bwrap`` command line of every command, and the
host checks (``bwrap`` present, user namespaces allowed, the unprivileged uid usable).

A sandbox's namespaces live as long as its **keeper**: a ``bwrap --unshare-all`` whose command only sleeps.
Every command is its own ``bwrap`` that joins the keeper's user and PID namespaces (``--userns``/``--pidns``,
the file descriptors opened by the host, which is allowed to read them) and makes a fresh mount, network,
IPC and UTS namespace with the same mounts. So every process of every command of one sandbox shares one PID
namespace (``ps`` shows them all, and only them), and killing the keeper kills them all: when a PID
namespace's init dies, the kernel kills everything in it.

bwrap creates a nested user namespace under the one that owns the other namespaces; joining the PID namespace
needs the owning one, which ``NS_GET_PARENT`` finds from the keeper's.

Every ``bwrap`` (the keeper's and each command's) is started **as the unprivileged uid/gid** (the switch is
made by the host before ``bwrap`` runs, with no supplementary groups): started as root, a user namespace maps
root, and the sandbox could read root-only host files through ``/usr`` and ``/etc``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Final

import anyio
import attrs
import psutil
from anyio.abc import Process

from openma.errors import ConfigError, SandboxError

#: ``ioctl(NS_GET_PARENT)``: the parent of a user namespace.
_NS_GET_PARENT: Final = 0xB702
#: Where the workspace and the private tmp appear inside.
WORKSPACE: Final = "/workspace"
TMP: Final = "/tmp"
#: What the keeper prints once its namespaces are set up.
_READY: Final = b"openma-ready\n"


@attrs.frozen
class Jail:
    """Where a sandbox's namespaces get their files and who runs in them.

    ``rootfs`` replaces the host's ``/usr``, ``/etc`` (and the ``/bin``, ``/lib*``, ``/sbin`` links or
    directories) as the read-only root when set; ``ro_binds`` are ``(host, inside)`` pairs bound read-only.
    """

    uid: int = 65534
    gid: int = 65534
    bwrap: str = "bwrap"
    rootfs: str | None = None
    ro_binds: tuple[tuple[str, str], ...] = ()


def _root_args(jail: Jail) -> list[str]:
    if jail.rootfs is not None:
        return ["--ro-bind", jail.rootfs, "/"]
    args = ["--tmpfs", "/", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    return args


def mounts(jail: Jail, directory: str, extra: Sequence[str] = ()) -> list[str]:
    """The mounts of every namespace of the sandbox whose host directory is ``directory`` (``extra``: more
    bwrap mount arguments, made before the root turns read-only)."""
    args = _root_args(jail)
    for host, inside in jail.ro_binds:
        args += ["--ro-bind", host, inside]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--bind", os.path.join(directory, "tmp"), TMP, "--bind", os.path.join(directory, "workspace"), WORKSPACE]
    args += extra
    if jail.rootfs is None:
        args += ["--remount-ro", "/"]  # the tmpfs root: nothing but /workspace and /tmp is writable
    return args


_COMMON: Final = ("--die-with-parent", "--new-session", "--cap-drop", "ALL")


def keeper_argv(jail: Jail, directory: str) -> list[str]:
    return [
        jail.bwrap,
        "--unshare-all",
        *_COMMON,
        *mounts(jail, directory),
        "--chdir",
        WORKSPACE,
        "/bin/sh",
        "-c",
        "echo openma-ready; exec sleep infinity",
    ]


def command_argv(
    jail: Jail, directory: str, fds: tuple[int, int, int], cwd: str, script: str, extra: Sequence[str] = ()
) -> list[str]:
    """A command that joins the keeper's namespaces: ``fds`` are the inherited descriptors of the owning user
    namespace (set-up runs there), the PID namespace, and the user namespace the keeper runs in; ``extra``
    are more bwrap arguments (mounts)."""
    owner, pidns, userns = fds
    return [
        jail.bwrap,
        "--userns",
        str(owner),
        "--userns2",
        str(userns),
        "--pidns",
        str(pidns),
        "--unshare-ipc",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        *_COMMON,
        *mounts(jail, directory, extra),
        "--chdir",
        cwd,
        "--",
        "/bin/sh",
        "-c",
        script,
    ]


async def open_as(jail: Jail, argv: Sequence[str], env: dict[str, str], *, fds: Sequence[int] = ()) -> Process:
    """Start ``argv`` as the jail's uid/gid (no supplementary groups), in a new session, stdin ``/dev/null``."""
    return await anyio.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=env,
        start_new_session=True,
        pass_fds=tuple(fds),
        user=jail.uid,
        group=jail.gid,
        extra_groups=[],
    )


class Keeper:
    """The live namespaces of one sandbox; :meth:`fds` are the descriptors a command joins them by."""

    def __init__(self, proc: Process, owner: int, pidns: int, userns: int) -> None:
        self.proc = proc
        self.owner = owner
        self.pidns = pidns
        self.userns = userns

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    @property
    def fds(self) -> tuple[int, int, int]:
        return self.owner, self.pidns, self.userns

    async def stop(self) -> None:
        """Kill the keeper (and with its PID namespace every process of the sandbox); close its fds."""
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        with anyio.CancelScope(shield=True):
            await self.proc.wait()
            await self.proc.aclose()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _namespaces(outer: int) -> tuple[int, int, int]:
    """``(owning user namespace, PID namespace, user namespace)`` fds of the keeper whose outer ``bwrap`` is
    ``outer``."""
    children = psutil.Process(outer).children()
    if not children:
        raise SandboxError("the sandbox's keeper has no namespace init")
    init = children[0].pid
    user = os.open(f"/proc/{init}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(user, _NS_GET_PARENT)
    except OSError:
        os.close(user)
        raise
    pid = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    return owner, pid, user


async def start_keeper(jail: Jail, directory: str, env: dict[str, str], *, timeout: float = 10.0) -> Keeper:
    """Start a sandbox's keeper and wait until its namespaces are set up (``SandboxError`` if they are not)."""
    try:
        proc = await open_as(jail, keeper_argv(jail, directory), env)
    except OSError as exc:
        raise SandboxError(f"cannot start bwrap: {exc}") from exc
    line = b""
    with anyio.move_on_after(timeout):
        assert proc.stdout is not None
        async for chunk in proc.stdout:
            line += chunk
            if line.endswith(b"\n"):
                break
    if line != _READY:
        err = b""
        if proc.returncode is None:
            os.killpg(proc.pid, 9)
        with anyio.CancelScope(shield=True):
            await proc.wait()
            if proc.stderr is not None:
                with anyio.move_on_after(1):
                    async for chunk in proc.stderr:
                        err += chunk
            await proc.aclose()
        raise SandboxError(f"bwrap could not set up the sandbox: {err.decode(errors='replace').strip()[:500]}")
    try:
        owner, pidns, userns = await anyio.to_thread.run_sync(_namespaces, proc.pid)
    except (OSError, psutil.Error, SandboxError) as exc:
        os.killpg(proc.pid, 9)
        with anyio.CancelScope(shield=True):
            await proc.wait()
            await proc.aclose()
        raise SandboxError(f"cannot open the sandbox's namespaces: {exc}") from exc
    return Keeper(proc, owner, pidns, userns)


def reachable(path: str, uid: int, gid: int) -> None:
    """``ConfigError`` unless ``uid``/``gid`` can search every directory from ``/`` down to ``path``: bwrap,
    running as them, must reach the workspace to bind it."""
    current = os.path.realpath(path)
    parts = [current]
    while current != "/":
        current = os.path.dirname(current)
        parts.append(current)
    for directory in reversed(parts):
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            return
        if st.st_uid == uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise ConfigError(
                f"the bubblewrap sandbox's uid {uid} cannot reach {path}: {directory} is not searchable by it "
                f"(mode {st.st_mode & 0o777:o}); put the sandbox root elsewhere or chmod o+x {directory}"
            )


def host_problem(jail: Jail) -> str | None:
    """Why the bubblewrap sandbox cannot run on this host, or ``None`` when a trial sandbox ran."""
    exe = shutil.which(jail.bwrap)
    if exe is None:
        return f"{jail.bwrap} is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if os.geteuid() != 0 and (os.geteuid(), os.getegid()) != (jail.uid, jail.gid):
        return f"switching to uid {jail.uid} needs root; this process runs as uid {os.geteuid()}"
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read().strip() or "0") == 0:
                return "user namespaces are disabled (sysctl user.max_user_namespaces=0)"
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:
            if f.read().strip() == "0":
                return "unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=0)"
    except OSError:
        pass
    try:
        done = subprocess.run(
            [exe, "--unshare-all", *_COMMON, *_root_args(jail), "--proc", "/proc", "/bin/sh", "-c", "exit 0"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=False,
            user=jail.uid,
            group=jail.gid,
            extra_groups=[],
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap cannot run as uid {jail.uid}: {exc}"
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip()[:300]
        return f"bwrap cannot create a sandbox as uid {jail.uid} (exit {done.returncode}): {why}"
    return None
