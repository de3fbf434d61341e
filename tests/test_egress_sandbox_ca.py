"""A sandbox told about the egress proxy gives every command the proxy's variables and a readable CA file, also
when several commands start at once (they all write the CA the first time; none may fail for it)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from openma.adapters.sandboxes.local import LocalSandboxConfig, LocalSandboxProvider
from openma.ports.egress import EgressEndpoint
from openma.ports.sandbox import SandboxSpec

pytestmark = pytest.mark.anyio

CA = "-----BEGIN CERTIFICATE-----\nMIIBnotarealcertificatebutpemshaped\n-----END CERTIFICATE-----\n"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_commands_started_together_all_get_the_ca_and_the_proxy(tmp_path: Path) -> None:
    provider = LocalSandboxProvider(LocalSandboxConfig(root=str(tmp_path / "sandboxes")))
    endpoint = EgressEndpoint(host="127.0.0.1", port=3128, credential="cred-1", ca_pem=CA)
    box = await provider.create(SandboxSpec(tenant_id="tnt_x", session_id="ses_x", egress=endpoint))
    results: list[tuple[int, str]] = []
    try:

        async def one() -> None:
            r = await box.exec('cat "$SSL_CERT_FILE"; echo "$HTTPS_PROXY"', timeout=30)
            results.append((r.exit_code, r.stdout))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
    finally:
        await box.destroy()
    assert len(results) == 8
    for code, out in results:
        assert code == 0
        assert out.startswith(CA)
        assert "@127.0.0.1:3128" in out
