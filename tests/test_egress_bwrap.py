"""End to end through the bubblewrap sandbox: a platform with ``sandbox="bubblewrap"``, its real egress proxy,
a real HTTPS upstream with its own CA, and ``curl`` and ``python3`` inside a session's namespaces.

The sandbox's only way out is the Unix socket to the proxy; the upstream sees the vault's credential and never
the sandbox's own ``Authorization``; the credential never enters the sandbox.

Importing ``tests.test_sandbox_bwrap`` skips this module exactly as that one is skipped where bwrap cannot run
(with ``OPENMA_REQUIRE_BWRAP=1`` that is a failure instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_egress_sessions import (
    ROOT,
    SANDBOX_OWN,
    TOKEN_A,
    URLLIB,
    open_session,
    received,
    upstream,
)
from tests.test_sandbox_bwrap import UID, root

__all__ = ["root", "upstream"]  # fixtures, imported for pytest

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_bubblewrap_session_reaches_the_upstream_only_through_the_proxy(
    root: Path, upstream: Any, anyio_backend: str
) -> None:
    from openma import Platform, Settings

    settings = Settings(
        sqlite_path=str(root / "openma.db"),
        blob_url=f"file://{root}/blobs",
        root_secret=ROOT,
        local_sandbox_root=str(root / "sandboxes"),
        sandbox="bubblewrap",
        egress_upstream_ca=upstream.ca_file,
    )
    base = f"https://127.0.0.1:{upstream.port}"
    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="e")
        t = oma.tenant(tenant.id)
        sid = await open_session(t, {"type": "limited", "allowed_hosts": ["127.0.0.1"]}, TOKEN_A)
        async with t.sessions.actor(sid) as actor:
            sb = await actor.sandbox()
            assert oma.egress is not None and oma.egress.running
            outputs: list[str] = []

            async def run(cmd: str) -> Any:
                result = await sb.exec(cmd, timeout=60)
                outputs.extend((result.stdout, result.stderr))
                return result

            assert (await run("id -u")).stdout.strip() == str(UID)  # in the namespaces, not a host process

            # curl and urllib reach the upstream through the proxy; it sees the vault's header, not the sandbox's
            done = await run(
                f"curl -sS -o /dev/null -w '%{{http_code}}' -H 'Authorization: {SANDBOX_OWN}' {base}/bytes/21"
            )
            assert done.stdout == "200", done
            seen = received(upstream, "/bytes/21")
            assert seen["authorization"] == f"Bearer {TOKEN_A}" and "proxy-authorization" not in seen
            done = await run(f"python3 -c \"{URLLIB}\" {base}/bytes/22 '{SANDBOX_OWN}'")
            assert done.stdout == "200", done
            assert received(upstream, "/bytes/22")["authorization"] == f"Bearer {TOKEN_A}"
            assert not [r for r in upstream.requests if SANDBOX_OWN in str(r["headers"])]

            # a host off the list: the proxy refuses the CONNECT
            code = "curl -s -o /dev/null -w '%{http_connect} %{http_code}' "
            refused = await run(f"{code} https://127.0.0.2:{upstream.port}/off-list")
            assert refused.stdout.startswith("403"), refused
            assert not [r for r in upstream.requests if r["path"] == "/off-list"]

            # bypassing the proxy: the upstream's loopback port does not exist in the sandbox's network
            direct = await run(f"curl -sS --noproxy '*' -o /dev/null {base}/direct")
            assert direct.exit_code != 0 and "Failed to connect" in direct.stderr, direct
            probe = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)"
            direct = await run(f'python3 -c "{probe}" {upstream.port}')
            assert direct.exit_code != 0 and "ConnectionRefusedError" in direct.stderr, direct
            assert not [r for r in upstream.requests if r["path"] == "/direct"]

            # the credential is nowhere in the sandbox: its environment, its files, what its commands printed
            env = (await run("env; cat /proc/self/environ")).stdout
            assert "HTTPS_PROXY=http://openma:" in env and "@127.0.0.1:3128" in env
            assert "SSL_CERT_FILE=/run/openma/ca-bundle.pem" in env
            await run(f"curl -sS -o fetched.bin {base}/bytes/100")
            await run("cat fetched.bin; ls -la /workspace /run/openma; grep -rs tok- /workspace /run/openma /tmp")
            assert not [out for out in outputs if TOKEN_A in out]
