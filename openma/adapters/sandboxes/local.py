"""LocalSubprocess: each sandbox is a directory on this host and its commands are child processes.

It isolates **nothing** from a hostile agent: commands run as the host's user, on the host's kernel, with
the host's network and filesystem (``cat ~/.ssh/id_rsa`` works). What it does is keep honest code from
hurting the host by accident:

* **Paths.** The file API is confined to the workspace: ``..``, absolute paths and symlinks resolving
  outside it are :class:`~openma.errors.InvalidInput` (checked with ``realpath``; not race-free against a
  command swapping symlinks at the same moment, which a hostile command has no need for anyway).
* **Special files.** ``read_file`` and ``write_file`` take regular files only: a FIFO, socket, device or
  directory is :class:`~openma.errors.InvalidInput` at once (opening a FIFO would block a worker thread that
  no cancel scope reaches); ``list_files`` lists directories only. They are still listed, tested with
  ``exists`` and removed like any entry.
* **Environment.** Commands get an allowlisted environment (``PATH``, ``LANG``, ``LC_*``, ``TZ`` from the
  host, ``HOME`` = the workspace, ``TMPDIR`` = the sandbox's own tmp), never the host's variables:
  ``OPENMA_ROOT_SECRET``, cloud keys and the rest stay out.
* **Runaway processes.** Every command starts in a new session (``setsid``); a timeout stops its whole
  process group (SIGTERM, then SIGKILL after a grace), plus any process of the run that left the group,
  found by the ``OPENMA_SANDBOX_RUN`` marker in its environment. Output is read as it comes and capped.
* **Resources.** Per-process limits (data segment, CPU seconds, open files, processes per user) are set
  with the shell's ``ulimit`` in front of the command (a limit the shell cannot set is a
  :class:`~openma.errors.ConfigError` when the provider is built), and a watchdog samples the resident
  memory of the command's processes together (through psutil, on every platform psutil supports): past
  the memory limit it kills them all and reports exit 137 with ``oom_killed=True``.
* **Processes.** ``exec`` and background processes are the same anyio process under the same supervisor;
  a background process lives as long as the event loop that started it, or until ``kill``/``destroy``.

Layout: ``<root>/<sandbox id>/workspace`` (the workspace, ``HOME`` and the default cwd), ``.../tmp``
(``TMPDIR``) and ``.../meta.json`` (tenant, session, labels, creation time).

The parts: :mod:`._config` (settings), :mod:`._limits` (``ulimit``), :mod:`._proctree` (process trees via
psutil), :mod:`._run` (the process runner), :mod:`._confine` (paths and input checks), :mod:`._localfs`
(file operations), :mod:`._sandbox` (``LocalSandbox``); this module is the provider.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import anyio
import attrs

from openma.adapters.sandboxes._config import NEVER_PASS, LocalLimits, LocalSandboxConfig
from openma.adapters.sandboxes._confine import check_env
from openma.adapters.sandboxes._limits import launcher_for
from openma.adapters.sandboxes._sandbox import LocalSandbox
from openma.core.ids import new_id
from openma.errors import ConfigError, NotFound, SandboxError
from openma.ports.blobs import BlobStore
from openma.ports.sandbox import SandboxSpec
from openma.settings import Settings

_SANDBOX_ID: Final = re.compile(r"sbx_[0-9a-z]{26}")


def _labels(spec: SandboxSpec) -> dict[str, str]:
    return {**spec.labels, "openma": "1", "openma_tenant": spec.tenant_id, "openma_session": spec.session_id}


# -- the provider ----------------------------------------------------------------------------------------


class LocalSandboxProvider:
    """Creates sandboxes as directories under ``config.root``.

    ``ConfigError`` when ``config.pass_env`` names a variable that is never passed, or when ``/bin/sh``
    cannot set one of ``config.limits`` with ``ulimit`` (asked once per process and set of limits).
    """

    name = "local"

    def __init__(self, config: LocalSandboxConfig, *, blobs: BlobStore | None = None) -> None:
        bad = NEVER_PASS.intersection(config.pass_env)
        if bad:
            raise ConfigError(f"{', '.join(sorted(bad))} can never be passed to sandboxed commands")
        root = os.path.realpath(os.path.abspath(os.path.expanduser(config.root)))
        self.config = attrs.evolve(config, root=root)
        self.blobs = blobs
        self._launch = launcher_for(config.limits)
        self._live: dict[str, LocalSandbox] = {}

    def __repr__(self) -> str:
        return f"LocalSandboxProvider(root={self.config.root!r}, live={len(self._live)})"

    def _dir(self, sandbox_id: str) -> str:
        return os.path.join(self.config.root, sandbox_id)

    def _make(self, sandbox_id: str, spec: SandboxSpec) -> LocalSandbox:
        sb = LocalSandbox(
            sandbox_id,
            self._dir(sandbox_id),
            spec,
            self.config,
            self._launch,
            self.blobs,
            on_close=self._forget,
        )
        self._live[sandbox_id] = sb
        return sb

    def _forget(self, sandbox_id: str) -> None:
        self._live.pop(sandbox_id, None)

    async def create(self, spec: SandboxSpec) -> LocalSandbox:
        check_env(spec.env, "spec.env")
        sandbox_id = new_id("sbx")
        directory = self._dir(sandbox_id)
        meta = {
            "id": sandbox_id,
            "tenant_id": spec.tenant_id,
            "session_id": spec.session_id,
            "labels": _labels(spec),
            "created_at_ms": time.time_ns() // 1_000_000,
        }

        def make() -> None:
            os.makedirs(os.path.join(directory, "workspace"))
            os.makedirs(os.path.join(directory, "tmp"))
            with open(os.path.join(directory, "meta.json"), "w") as f:
                json.dump(meta, f)

        try:
            await anyio.to_thread.run_sync(make)
        except OSError as exc:
            raise SandboxError(f"cannot create a sandbox under {self.config.root}: {exc}") from exc
        return self._make(sandbox_id, spec)

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> LocalSandbox:
        if sandbox_id in self._live:
            return self._live[sandbox_id]
        if not isinstance(sandbox_id, str) or not _SANDBOX_ID.fullmatch(sandbox_id):
            raise NotFound(f"no local sandbox {sandbox_id!r}", sandbox_id=sandbox_id)
        if not await anyio.to_thread.run_sync(os.path.isdir, os.path.join(self._dir(sandbox_id), "workspace")):
            raise NotFound(f"no local sandbox {sandbox_id!r}", sandbox_id=sandbox_id)
        return self._make(sandbox_id, spec)

    async def list_labeled(self, labels: Mapping[str, str]) -> list[tuple[str, datetime | None]]:
        def scan() -> list[tuple[str, datetime | None]]:
            out: list[tuple[str, datetime | None]] = []
            try:
                names = sorted(os.listdir(self.config.root))
            except FileNotFoundError:
                return out
            for name in names:
                try:
                    with open(os.path.join(self.config.root, name, "meta.json")) as f:
                        meta = json.load(f)
                except (OSError, ValueError):
                    continue
                have = meta.get("labels", {})
                if all(have.get(k) == v for k, v in labels.items()):
                    created = meta.get("created_at_ms")
                    out.append((name, datetime.fromtimestamp(created / 1000, UTC) if created else None))
            return out

        return await anyio.to_thread.run_sync(scan)

    async def destroy_id(self, sandbox_id: str) -> None:
        try:
            sb = await self.attach(sandbox_id, SandboxSpec(tenant_id="", session_id=""))
        except NotFound:
            return
        await sb.destroy()

    async def reap_expired(self) -> list[str]:
        """Destroy the live sandboxes whose lifetime (extended by keepalives) has run out; their ids."""
        gone = [sb for sb in list(self._live.values()) if sb.expired]
        for sb in gone:
            await sb.destroy()
        return [sb.id for sb in gone]

    async def aclose(self) -> None:
        """Stop the processes of every sandbox this provider opened; their directories stay (``attach``)."""
        for sb in list(self._live.values()):
            await sb.close()


def config_from_settings(settings: Settings) -> LocalSandboxConfig:
    """The local sandbox's configuration from its ``local_sandbox_*`` settings."""
    return LocalSandboxConfig(
        root=settings.local_sandbox_root,
        output_bytes=settings.local_sandbox_output_bytes,
        limits=LocalLimits(
            memory_bytes=settings.local_sandbox_memory_bytes,
            cpu_seconds=settings.local_sandbox_cpu_seconds,
            open_files=settings.local_sandbox_open_files,
            processes=settings.local_sandbox_processes,
        ),
        kill_grace=settings.local_sandbox_kill_grace,
        pass_env=tuple(settings.local_sandbox_pass_env),
    )


async def open_sandbox_provider(settings: Settings, *, blobs: BlobStore | None = None) -> LocalSandboxProvider:
    """The ``local`` entry of :data:`openma.registry.sandboxes`."""
    return LocalSandboxProvider(config_from_settings(settings), blobs=blobs)


__all__ = [
    "LocalLimits",
    "LocalSandbox",
    "LocalSandboxConfig",
    "LocalSandboxProvider",
    "open_sandbox_provider",
]
