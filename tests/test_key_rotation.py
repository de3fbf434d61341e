"""Key rotation: ``keys status`` / ``keys rotate`` on the command line, and the resumable batches under them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from openma import Platform, SecretUnreadable, Settings
from openma.adapters.sql.rotate import admin_key_status, admin_rotate
from openma.core.secrets import KeyRing

OLD = "old-root-secret-0123456789abcdefgh"
NEW = "new-root-secret-0123456789abcdefgh"
STRANGER = "stranger-root-secret-0123456789ab"


async def fill(settings: Settings, credentials: int = 7, secrets: int = 3) -> tuple[str, list[str], str]:
    """A tenant with ``credentials`` credentials and a session with ``secrets`` secrets, under ``settings``."""
    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="t")
        t = oma.tenant(tenant.id)
        vault = await t.vaults.create(name="v")
        ids = []
        for i in range(credentials):
            auth = {"type": "static_bearer", "token": f"token-{i}-secret", "hosts": ["a.io"]}
            ids.append((await t.credentials.create(vault_id=vault.id, display_name=f"c{i}", auth=auth)).id)
        agent = await t.agents.create(name="a", model="m")
        env = await t.environments.create(name="e")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, vault_ids=[vault.id])
        for i in range(secrets):
            await t.session_secrets.put(session.id, f"S{i}", f"session-secret-{i}")
        return tenant.id, ids, session.id


async def check_readable(settings: Settings, tenant_id: str, ids: list[str], session_id: str) -> None:
    async with Platform.open(settings) as oma:
        t = oma.tenant(tenant_id)
        for i, cred_id in enumerate(ids):
            assert (await t.credentials.reveal(cred_id))["token"] == f"token-{i}-secret"
        for i, name in enumerate(await t.session_secrets.names(session_id)):
            assert await t.session_secrets.reveal(session_id, name) == f"session-secret-{i}"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENMA_", "STORE_BACKENDS", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "openma", *args], env={**base, **env}, capture_output=True, text=True, check=False
    )


def test_rotate_from_the_command_line(tmp_path: Path) -> None:
    paths = {"OPENMA_SQLITE_PATH": str(tmp_path / "o.db"), "OPENMA_BLOB_URL": f"file://{tmp_path}/b"}
    old = Settings(sqlite_path=paths["OPENMA_SQLITE_PATH"], blob_url=paths["OPENMA_BLOB_URL"], root_secret=OLD)
    tenant_id, ids, session_id = anyio.run(fill, old)
    old_id, new_id = KeyRing(OLD).key_id, KeyRing(NEW).key_id

    status = cli("keys", "status", env={**paths, "OPENMA_ROOT_SECRET": OLD})
    assert status.returncode == 0, status.stderr
    assert f"{old_id}  current   10 ciphertext(s)" in status.stdout

    rotated_env = {**paths, "OPENMA_ROOT_SECRET": NEW, "OPENMA_ROOT_SECRET_PREVIOUS": OLD}
    out = cli("keys", "rotate", "--batch-size", "3", env=rotated_env)
    assert out.returncode == 0, out.stderr
    assert f"rotated 10 ciphertext(s) to key id {new_id}; 0 already current or changed meanwhile; 0 unreadable" in (
        out.stdout
    )
    assert OLD not in out.stdout + out.stderr and NEW not in out.stdout + out.stderr

    status = cli("keys", "status", env=rotated_env)
    assert f"{new_id}  current   10 ciphertext(s)" in status.stdout
    assert f"{old_id}  previous  0 ciphertext(s)" in status.stdout
    anyio.run(
        check_readable,
        Settings(sqlite_path=old.sqlite_path, blob_url=old.blob_url, root_secret=NEW),
        *(tenant_id, ids, session_id),
    )

    again = cli("keys", "rotate", env=rotated_env)
    assert "rotated 0 ciphertext(s)" in again.stdout

    stranger = Settings(sqlite_path=old.sqlite_path, blob_url=old.blob_url, root_secret=STRANGER)
    anyio.run(fill, stranger, 1, 0)
    out = cli("keys", "rotate", env=rotated_env)
    assert out.returncode != 0 and "1 unreadable" in out.stdout and "OPENMA_ROOT_SECRET_PREVIOUS" in out.stderr
    assert f"{KeyRing(STRANGER).key_id}  UNKNOWN   1 ciphertext(s)" in cli("keys", "status", env=rotated_env).stdout


class Crash(Exception):
    pass


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_crashed_rotation_resumes(engine: str, engine_url: str, tmp_path: Path, anyio_backend: str) -> None:
    url = f"sqlite:///{engine_url}" if engine == "sqlite" else engine_url
    common: dict[str, Any] = {"blob_url": f"file://{tmp_path}/b"}
    tenant_id, ids, session_id = await fill(Settings.from_url(url, root_secret=OLD, **common), 9, 4)
    async with Platform.from_url(url, root_secret=NEW, root_secret_previous=[OLD], **common) as oma:
        client = oma.backend("vaults").client  # type: ignore[attr-defined]
        batches = 0

        def crash_after_two(n: int) -> None:
            nonlocal batches
            batches += 1
            if batches == 2:
                raise Crash

        with pytest.raises(Crash):
            await admin_rotate(client, oma.keys, batch_size=2, progress=crash_after_two)
        half = await admin_key_status(client)
        assert half == {oma.keys.key_id: 4, KeyRing(OLD).key_id: 9}
        report = await admin_rotate(client, oma.keys, batch_size=2)
        assert (report.rotated, report.unreadable) == (9, 0)
        assert await admin_key_status(client) == {oma.keys.key_id: 13}
        with pytest.raises(ValueError, match="batch_size"):
            await admin_rotate(client, oma.keys, batch_size=0)
    await check_readable(Settings.from_url(url, root_secret=NEW, **common), tenant_id, ids, session_id)
    async with Platform.from_url(url, root_secret=OLD, **common) as oma:
        with pytest.raises(SecretUnreadable):
            await oma.tenant(tenant_id).credentials.reveal(ids[0])
