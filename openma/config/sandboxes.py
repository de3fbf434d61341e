"""The configuration of the sandbox providers and of the orchestrator's sandbox upkeep."""

from __future__ import annotations

import re
from typing import Any, Final

import attrs

from openma._validators import integer_in, number_in, string
from openma.config._field import INT32, MAX_BYTES, optional_int, setting
from openma.errors import ConfigError

#: Host variables a local sandbox passes to its commands by default.
LOCAL_SANDBOX_PASS_ENV: Final = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


# -- Local sandboxes -------------------------------------------------------------------------------------


def _parse_pass_env(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ConfigError("local_sandbox_pass_env must be a list of variable names", field="local_sandbox_pass_env")
    out = []
    for name in value:
        name = name.strip() if isinstance(name, str) else name
        if name == "":
            continue
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(
                f"local_sandbox_pass_env has an invalid variable name {name!r}", field="local_sandbox_pass_env"
            )
        if name in ("OPENMA_ROOT_SECRET", "OPENMA_ROOT_SECRET_PREVIOUS"):
            raise ConfigError(f"{name} can never be passed to sandboxed commands", field="local_sandbox_pass_env")
        out.append(name)
    return tuple(out)


@attrs.frozen
class LocalSandboxConfig:
    """The ``local`` sandbox provider (LocalSubprocess); a limit set to ``0`` is off.

    The provider turns it into its own runtime configuration
    (:func:`openma.adapters.sandboxes.local.config_from_settings`).
    """

    root: str = setting(
        "local_sandbox_root",
        "OPENMA_LOCAL_SANDBOX_ROOT",
        "Directory holding `<sandbox id>/workspace`, `tmp` and `meta.json` per sandbox.",
        default="./.openma/sandboxes",
        validator=string(),
    )
    output_bytes: int = setting(
        "local_sandbox_output_bytes",
        "OPENMA_LOCAL_SANDBOX_OUTPUT_BYTES",
        "Bytes kept of each of stdout and stderr (and of each background process's logs); the rest is read and "
        "dropped, and `truncated` is set.",
        default=1 << 20,
        validator=integer_in(1, 1 << 40),
        kind="int",
    )
    memory_bytes: int = setting(
        "local_sandbox_memory_bytes",
        "OPENMA_LOCAL_SANDBOX_MEMORY_BYTES",
        "Resident memory of one command's processes together; past it they are all killed and the result says "
        "exit 137, `oom_killed=True`. Each process's data segment is also capped at twice this.",
        default=2 << 30,
        validator=integer_in(0, MAX_BYTES),
        kind="int",
    )
    cpu_seconds: int = setting(
        "local_sandbox_cpu_seconds",
        "OPENMA_LOCAL_SANDBOX_CPU_SECONDS",
        "CPU seconds per process (SIGXCPU, exit 152, then SIGKILL a second later).",
        default=3600,
        validator=integer_in(0, INT32),
        kind="int",
    )
    open_files: int = setting(
        "local_sandbox_open_files",
        "OPENMA_LOCAL_SANDBOX_OPEN_FILES",
        "Open file descriptors per process.",
        default=1024,
        validator=integer_in(0, INT32),
        kind="int",
    )
    processes: int = setting(
        "local_sandbox_processes",
        "OPENMA_LOCAL_SANDBOX_PROCESSES",
        "`RLIMIT_NPROC`: counts every process of the host user, not only the sandbox's; root is exempt.",
        default=4096,
        validator=integer_in(0, INT32),
        kind="int",
    )
    kill_grace: float = setting(
        "local_sandbox_kill_grace",
        "OPENMA_LOCAL_SANDBOX_KILL_GRACE",
        "Seconds between SIGTERM and SIGKILL when a command times out or is killed.",
        default=2.0,
        validator=number_in(0, 3600),
        kind="float",
    )
    pass_env: tuple[str, ...] = setting(
        "local_sandbox_pass_env",
        "OPENMA_LOCAL_SANDBOX_PASS_ENV",
        "Comma-separated host variables commands may see. Nothing else of the host's environment reaches them; "
        "`OPENMA_ROOT_SECRET` is refused here.",
        default=LOCAL_SANDBOX_PASS_ENV,
        converter=_parse_pass_env,
        kind="raw",
    )


# -- Bubblewrap sandboxes -------------------------------------------------------------------------------


def _parse_ro_binds(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ConfigError("bubblewrap_ro_binds must be a list of absolute paths", field="bubblewrap_ro_binds")
    out = []
    for item in value:
        item = item.strip() if isinstance(item, str) else item
        if item == "":
            continue
        if not isinstance(item, str) or not item.startswith("/") or "\0" in item:
            raise ConfigError(f"bubblewrap_ro_binds has a bad path {item!r}", field="bubblewrap_ro_binds")
        out.append(item)
    return tuple(out)


@attrs.frozen
class BubblewrapConfig:
    """The ``bubblewrap`` sandbox provider; it also takes the ``local_sandbox_*`` settings (root, output cap,
    limits, grace, passed variables)."""

    uid: int = setting(
        "bubblewrap_uid",
        "OPENMA_BUBBLEWRAP_UID",
        "Host uid every sandboxed command runs as (switched to before `bwrap` starts); it owns the workspaces. "
        "Never 0.",
        default=65534,
        validator=integer_in(1, INT32),
        kind="int",
    )
    gid: int = setting(
        "bubblewrap_gid",
        "OPENMA_BUBBLEWRAP_GID",
        "Host gid of sandboxed commands (no supplementary groups). Never 0.",
        default=65534,
        validator=integer_in(1, INT32),
        kind="int",
    )
    rootfs: str | None = setting(
        "bubblewrap_rootfs",
        "OPENMA_BUBBLEWRAP_ROOTFS",
        "A directory bound read-only as the sandbox's `/`; unset: a tmpfs with the host's `/usr` and `/etc`.",
        default=None,
        validator=string(optional=True),
    )
    ro_binds: tuple[str, ...] = setting(
        "bubblewrap_ro_binds",
        "OPENMA_BUBBLEWRAP_RO_BINDS",
        "Comma-separated host paths bound read-only at the same place inside (say `/opt/tools`).",
        default=(),
        converter=_parse_ro_binds,
        kind="raw",
        shown="none",
    )


# -- Remote sandbox providers ----------------------------------------------------------------------------


def _optional_str(name: str, env: str, doc: str, *, shown: str | None = None, secret: bool = False) -> Any:
    return setting(name, env, doc, default=None, validator=string(optional=True), shown=shown, secret=secret)


@attrs.frozen
class E2BConfig:
    """The ``e2b`` sandbox provider (``pip install 'openma[e2b]'``)."""

    api_key: str | None = _optional_str(
        "e2b_api_key", "E2B_API_KEY", "E2B API key (required for `e2b`). Never printed.", secret=True
    )
    domain: str | None = _optional_str(
        "e2b_domain", "E2B_DOMAIN", "E2B domain; set it for a self-hosted E2B.", shown="`e2b.app` (the SDK's)"
    )
    api_url: str | None = _optional_str(
        "e2b_api_url",
        "E2B_API_URL",
        "Control-plane URL override. The SDK marks it internal and will drop it in its next major version; for "
        "tests and proxies.",
        shown="derived from the domain",
    )
    sandbox_url: str | None = _optional_str(
        "e2b_sandbox_url",
        "E2B_SANDBOX_URL",
        "envd URL override for every sandbox (same caveat).",
        shown="derived from the domain",
    )
    template: str | None = _optional_str(
        "e2b_template",
        "E2B_TEMPLATE",
        "Template name or id for new sandboxes; `SandboxSpec.image` overrides it.",
        shown="`base` (the SDK's)",
    )


@attrs.frozen
class DaytonaConfig:
    """The ``daytona`` sandbox provider (``pip install 'openma[daytona]'``)."""

    api_key: str | None = _optional_str(
        "daytona_api_key", "DAYTONA_API_KEY", "Daytona API key (required for `daytona`). Never printed.", secret=True
    )
    api_url: str | None = _optional_str(
        "daytona_api_url", "DAYTONA_API_URL", "Daytona API URL.", shown="`https://app.daytona.io/api`"
    )
    target: str | None = _optional_str(
        "daytona_target", "DAYTONA_TARGET", "Daytona region.", shown="the organization's default"
    )
    image: str | None = _optional_str(
        "daytona_image",
        "DAYTONA_IMAGE",
        "Image new sandboxes are built from; `SandboxSpec.image` overrides it, and "
        '`SandboxSpec.options["snapshot"]` picks a Daytona snapshot instead.',
        shown="unset: Daytona's default snapshot",
    )
    cpu: int | None = setting(
        "daytona_cpu",
        "DAYTONA_CPU",
        "vCPUs of a new sandbox (the original's `instance_type`). Resources need an image: a snapshot's "
        "sandboxes are sized by the snapshot.",
        default=None,
        validator=optional_int(1, 1024),
        kind="int",
        shown="unset: Daytona's",
    )
    memory: int | None = setting(
        "daytona_memory",
        "DAYTONA_MEMORY",
        "Memory of a new sandbox, in GiB.",
        default=None,
        validator=optional_int(1, 65536),
        kind="int",
        shown="unset: Daytona's",
    )
    disk: int | None = setting(
        "daytona_disk",
        "DAYTONA_DISK",
        "Disk of a new sandbox, in GiB.",
        default=None,
        validator=optional_int(1, 65536),
        kind="int",
        shown="unset: Daytona's",
    )


# -- Sandbox upkeep --------------------------------------------------------------------------------------


@attrs.frozen
class UpkeepConfig:
    """The orchestrator's sandbox upkeep while a platform is open (``0`` turns a pass off)."""

    keepalive_interval: float = setting(
        "sandbox_keepalive_interval",
        "OPENMA_SANDBOX_KEEPALIVE_INTERVAL",
        "Seconds between upkeep passes. Each pass keeps every live sandbox alive for its lifetime again. `0` "
        "turns upkeep off.",
        default=300.0,
        validator=number_in(0, 86_400.0),
        kind="float",
    )
    idle_reap_after: float = setting(
        "sandbox_idle_reap_after",
        "OPENMA_SANDBOX_IDLE_REAP_AFTER",
        "Seconds a sandbox may go unused before a pass reaps it (snapshot, destroy; the session restores on its "
        "next call). `0`: never reaped.",
        default=1800.0,
        validator=number_in(0, 31_536_000.0),
        kind="float",
    )
