"""The configuration of the egress proxy every sandbox's outbound HTTP(S) goes through (``docs/egress.md``)."""

from __future__ import annotations

from typing import Any, Final

import attrs

from openma._validators import boolean, integer_in, string
from openma.config._field import optional_int, setting
from openma.errors import ConfigError

EGRESS_MODES: Final = ("proxy", "off")


def _mode(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in EGRESS_MODES:
        raise ConfigError(
            f"OPENMA_EGRESS (egress_mode) must be one of {', '.join(EGRESS_MODES)}, got {value!r}",
            field="egress_mode",
            choices=EGRESS_MODES,
        )


@attrs.frozen
class EgressConfig:
    """Whether sandboxes go through the egress proxy, where it listens, and which upstream CAs it trusts."""

    mode: str = setting(
        "egress_mode",
        "OPENMA_EGRESS",
        "`proxy`: every sandbox's outbound HTTP(S) goes through the platform's egress proxy (allowlist, "
        "credential injection); `off`: no proxy, sandboxes reach the network directly (a loud warning at start).",
        default="proxy",
        validator=_mode,
    )
    upstream_ca: str | None = setting(
        "egress_upstream_ca",
        "OPENMA_EGRESS_UPSTREAM_CA",
        "PEM file of extra CAs the proxy trusts for upstream servers, besides the system store (a private CA).",
        default=None,
        validator=string(optional=True),
        shown="unset",
    )
    listen_host: str = setting(
        "egress_listen_host",
        "OPENMA_EGRESS_LISTEN_HOST",
        "Address the proxy listens on. Local sandboxes use it; set a reachable one for remote sandboxes.",
        default="127.0.0.1",
        validator=string(),
    )
    listen_port: int = setting(
        "egress_listen_port",
        "OPENMA_EGRESS_LISTEN_PORT",
        "Port the proxy listens on (`0`: a free port chosen at start, kept across restarts of the proxy).",
        default=0,
        validator=integer_in(0, 65535),
        kind="int",
    )
    advertise_host: str | None = setting(
        "egress_advertise_host",
        "OPENMA_EGRESS_ADVERTISE_HOST",
        "Host remote sandboxes (E2B, Daytona) are told to reach the proxy at (a public name, or a tunnel's).",
        default=None,
        validator=string(optional=True),
        shown="the listen host",
    )
    advertise_port: int | None = setting(
        "egress_advertise_port",
        "OPENMA_EGRESS_ADVERTISE_PORT",
        "Port remote sandboxes are told to reach the proxy at.",
        default=None,
        validator=optional_int(1, 65535),
        kind="int",
        shown="the listen port",
    )
    passthrough: bool = setting(
        "egress_passthrough",
        "OPENMA_EGRESS_PASSTHROUGH",
        "`true`: a `CONNECT` of a session with `unrestricted` networking to a host that gets no injected header is "
        "tunnelled without TLS interception (faster; the sandbox must trust public CAs itself). `false`: every "
        "`CONNECT` is intercepted.",
        default=False,
        validator=boolean,
        kind="bool",
    )
