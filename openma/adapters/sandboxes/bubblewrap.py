"""Bubblewrap: a local sandbox that isolates, on Linux namespaces (``OPENMA_SANDBOX=bubblewrap``).

Each sandbox is a directory on this host, as with LocalSubprocess (``<root>/<id>/workspace``, ``tmp``,
``meta.json``), and the same code runs its commands, files, background processes, limits and snapshots;
what differs is where a command runs: inside ``bwrap`` (see :mod:`._bwrap_jail`),

* as a **real unprivileged uid/gid on the host** (``nobody``/``nogroup`` by default), switched to before
  ``bwrap`` starts, with no supplementary groups, every capability dropped and ``no_new_privs``;
* in new user, PID, mount, network, IPC, UTS (and cgroup) namespaces: a private tmpfs root with the host's
  ``/usr`` and ``/etc`` read-only (or a configured rootfs), ``/proc``, ``/dev``, the sandbox's own ``/tmp``
  and its workspace read-write at ``/workspace``; nothing else of the host exists inside;
* with a network namespace holding nothing but ``lo``: no address outside the sandbox is reachable, not
  even the host's loopback;
* all its processes in one PID namespace that dies with the sandbox (``destroy`` kills its init).

The host side runs as root (it must switch uid), reads and writes the workspace for the file API (paths
confined as in LocalSubprocess) and gives what it writes to the sandbox's uid.

The provider needs ``bwrap`` and user namespaces; :func:`host_problem` says why it cannot run, and the
``doctor`` reports it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import anyio
import psutil

from openma.adapters.sandboxes import _bwrap_egress as egress
from openma.adapters.sandboxes._bwrap_jail import (
    TMP,
    WORKSPACE,
    Jail,
    Keeper,
    command_argv,
    host_problem,
    open_as,
    reachable,
    start_keeper,
)
from openma.adapters.sandboxes._config import DEFAULT_PATH, MARKER, LocalSandboxConfig
from openma.adapters.sandboxes._confine import check_cmd, workdir
from openma.adapters.sandboxes._proctree import RunMarker, marked
from openma.adapters.sandboxes._run import Run, spawn_detached
from openma.adapters.sandboxes._sandbox import LocalSandbox
from openma.adapters.sandboxes.local import LocalSandboxProvider, config_from_settings
from openma.errors import ConfigError, SandboxError
from openma.ports.blobs import BlobStore
from openma.ports.egress import EgressEndpoint
from openma.ports.sandbox import SandboxSpec
from openma.settings import Settings


def _marked_rss(marker: RunMarker) -> int:
    total = 0
    for pid in marked(marker):
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total


class BubblewrapSandbox(LocalSandbox):
    """One session's sandbox in its own namespaces (see the module docstring)."""

    def __init__(self, *args: object, jail: Jail, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.jail = jail
        self._keeper: Keeper | None = None
        self._keeper_lock = anyio.Lock()
        self._relay: egress.EgressRelay | None = None
        self._caps = self._caps | {"isolation"}

    def __repr__(self) -> str:
        state = "destroyed" if self._closed else "open"
        return f"BubblewrapSandbox({self._id!r}, {state}, uid={self.jail.uid})"

    def _base_env(self) -> dict[str, str]:
        return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", MARKER: f"{self._id}."}

    async def _namespaces(self) -> Keeper:
        async with self._keeper_lock:
            if self._keeper is None or not self._keeper.alive:
                if self._keeper is not None:
                    await self._keeper.stop()
                self._keeper = await start_keeper(self.jail, self._dir, self._base_env())
            if self.spec.egress is not None and self._relay is None:
                await self._open_relay(self.spec.egress)
            return self._keeper

    async def _open_relay(self, endpoint: EgressEndpoint) -> None:
        jail = self.jail
        where = await anyio.to_thread.run_sync(egress.write_files, self._dir, endpoint, jail.uid, jail.gid)
        relay = egress.EgressRelay(os.path.join(where, "proxy.sock"), endpoint, jail.uid, jail.gid)
        try:
            await relay.open()
        except OSError as exc:
            raise SandboxError(f"cannot open the egress relay of sandbox {self._id}: {exc}") from exc
        self._relay = relay
        spawn_detached(relay.serve)

    def _env(self, run: str, extra: Mapping[str, str] | None, secrets: Sequence[str], cwd: str) -> dict[str, str]:
        env = super()._env(run, extra, secrets, cwd)
        inside = WORKSPACE + cwd[len(self._ws) :]
        if "PATH" not in self.spec.env and not (extra and "PATH" in extra):
            env["PATH"] = DEFAULT_PATH  # the host's PATH names host directories
        env.update(HOME=WORKSPACE, TMPDIR=TMP, PWD=inside)
        return env

    def _egress_env(self, endpoint: EgressEndpoint) -> dict[str, str]:
        """The forwarder inside the sandbox, and the CA bundle as bound there."""
        return egress.command_env(endpoint)

    async def _start(
        self, cmd: str, env: Mapping[str, str] | None, cwd: str | None, secrets: Sequence[str]
    ) -> tuple[str, Run]:
        self._ensure_open()
        check_cmd(cmd)
        where = workdir(self._ws, cwd)
        run = self._next_run()
        env_map = self._env(run, env, secrets, where)
        keeper = await self._namespaces()
        script = self._launch.argv(cmd)[-1]
        extra: list[str] = []
        if self.spec.egress is not None:
            script = egress.prelude() + script
            extra = ["--ro-bind", os.path.join(self._dir, "egress"), egress.INSIDE]
        argv = command_argv(self.jail, self._dir, keeper.fds, env_map["PWD"], script, extra)
        try:
            proc = await open_as(self.jail, argv, env_map, fds=keeper.fds)
        except OSError as exc:
            raise SandboxError(f"cannot start a command in sandbox {self._id}: {exc}", sandbox_id=self._id) from exc
        cfg = self._cfg
        marker = self._marker(run)
        return run, Run(
            proc,
            cmd,
            marker,
            cap=cfg.output_bytes,
            memory=cfg.limits.memory_bytes if "oom_detection" in self._caps else 0,
            grace=cfg.kill_grace,
            rss=lambda _leader: _marked_rss(marker),
        )

    async def write_file(self, path: str, data: bytes) -> None:
        await super().write_file(path, data)
        uid, gid = self.jail.uid, self.jail.gid
        ws = self._ws

        def give() -> None:
            from openma.adapters.sandboxes._confine import resolve

            real = resolve(ws, path)
            while real != ws and real.startswith(ws + os.sep):
                st = os.lstat(real)
                if (st.st_uid, st.st_gid) == (uid, gid):
                    break
                os.lchown(real, uid, gid)
                real = os.path.dirname(real)

        await anyio.to_thread.run_sync(give)

    async def close(self, *, remove: bool = False) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.stop()
        relay, self._relay = self._relay, None
        if relay is not None:
            await relay.close()
        await super().close(remove=remove)


class BubblewrapSandboxProvider(LocalSandboxProvider):
    """Creates bubblewrap sandboxes under ``config.root``; ``ConfigError`` when this host cannot run them."""

    name = "bubblewrap"

    def __init__(self, config: LocalSandboxConfig, *, jail: Jail | None = None, blobs: BlobStore | None = None) -> None:
        super().__init__(config, blobs=blobs)
        self.jail = jail = jail if jail is not None else Jail()
        problem = host_problem(jail)
        if problem is not None:
            raise ConfigError(f"the bubblewrap sandbox cannot run here: {problem}")

    def __repr__(self) -> str:
        return f"BubblewrapSandboxProvider(root={self.config.root!r}, uid={self.jail.uid}, live={len(self._live)})"

    def _make(self, sandbox_id: str, spec: SandboxSpec) -> LocalSandbox:
        sb = BubblewrapSandbox(
            sandbox_id,
            self._dir(sandbox_id),
            spec,
            self.config,
            self._launch,
            self.blobs,
            on_close=self._forget,
            jail=self.jail,
        )
        self._live[sandbox_id] = sb
        return sb

    async def create(self, spec: SandboxSpec) -> LocalSandbox:
        os.makedirs(self.config.root, exist_ok=True)
        reachable(self.config.root, self.jail.uid, self.jail.gid)
        sb = await super().create(spec)
        uid, gid = self.jail.uid, self.jail.gid

        def own() -> None:
            directory = self._dir(sb.id)
            os.chmod(directory, 0o711)
            for name in ("workspace", "tmp"):
                os.chown(os.path.join(directory, name), uid, gid)
                os.chmod(os.path.join(directory, name), 0o700)

        try:
            await anyio.to_thread.run_sync(own)
        except OSError as exc:
            await sb.destroy()
            raise SandboxError(f"cannot give the sandbox's workspace to uid {uid}: {exc}") from exc
        return sb


def jail_from_settings(settings: Settings) -> Jail:
    """The namespaces' configuration from the ``bubblewrap_*`` settings."""
    cfg = settings.bubblewrap
    return Jail(uid=cfg.uid, gid=cfg.gid, rootfs=cfg.rootfs, ro_binds=tuple((p, p) for p in cfg.ro_binds))


async def open_sandbox_provider(settings: Settings, *, blobs: BlobStore | None = None) -> BubblewrapSandboxProvider:
    """The ``bubblewrap`` entry of :data:`openma.registry.sandboxes` (it shares the ``local_sandbox_*``
    settings: root, output cap, limits, grace, passed variables)."""
    config, jail = config_from_settings(settings), jail_from_settings(settings)
    return await anyio.to_thread.run_sync(lambda: BubblewrapSandboxProvider(config, jail=jail, blobs=blobs))


__all__ = [
    "BubblewrapSandbox",
    "BubblewrapSandboxProvider",
    "Jail",
    "host_problem",
    "open_sandbox_provider",
]
