"""A whole session with vaults, session secrets, sandbox secrets and a Postgres password, then a search for every
secret value in everything openma wrote or showed: SQLite files, Postgres tables, blobs, DEBUG logs,
telemetry, and the reprs (and JSON) of every model, store and settings object. None may be found."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from openma import Conflict, Page, Platform, SecretUnreadable, Settings, to_json
from openma.adapters.telemetry import FanoutTelemetry, LoggingTelemetry
from openma.testing import MemoryTelemetry
from openma.testing.pgserver import PgServer

ROOT = "root-secret-never-seen-5d1f0a9c2b"
PG_PASSWORD = "pg-password-never-seen-77aa"
BEARER = "ghp_bearer_never_seen_0011223344"
ACCESS = "access-token-never-seen-5566"
REFRESH = "refresh-token-never-seen-7788"
NEW_ACCESS = "access-token-never-seen-new-99"
NEW_REFRESH = "refresh-token-never-seen-new-00"
CLIENT_SECRET = "client-secret-never-seen-aabb"
SESSION_SECRET = "session-secret-never-seen-ccdd"
SANDBOX_SECRET = "sandbox-secret-never-seen-eeff"
SECRETS = [ROOT, PG_PASSWORD, BEARER, ACCESS, REFRESH, NEW_ACCESS, NEW_REFRESH, CLIENT_SECRET, SESSION_SECRET,
           SANDBOX_SECRET]  # fmt: skip


def found_in(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.anyio
@pytest.mark.postgres
async def test_no_secret_is_ever_written_or_shown_in_the_clear(
    pg_server: PgServer, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    pg_server.execute(f"CREATE ROLE vault_user LOGIN PASSWORD '{PG_PASSWORD}' SUPERUSER")
    url = f"postgresql://vault_user:{PG_PASSWORD}@127.0.0.1:{pg_server.port}/{dbname}"
    settings = Settings(
        sqlite_path=str(tmp_path / "data" / "openma.db"),
        blob_url=f"file://{tmp_path}/blobs",
        local_sandbox_root=str(tmp_path / "sandboxes"),
        postgres_url=url,
        store_backends={"default": "cf", "vaults": "pg"},
        root_secret=ROOT,
    )
    telemetry = MemoryTelemetry()
    shown: list[Any] = [settings, settings.postgres, telemetry]
    caplog.set_level(logging.DEBUG)
    both = FanoutTelemetry([telemetry, LoggingTelemetry(level=logging.DEBUG)])
    async with Platform.open(settings, telemetry=both) as oma:
        tenant = await oma.tenants.create(name="acme")
        t = oma.tenant(tenant.id)
        vault = await t.vaults.create(name="github")
        bearer = await t.credentials.create(
            vault_id=vault.id,
            display_name="gh bot",
            auth={"type": "static_bearer", "token": BEARER, "hosts": ["api.github.com"]},
        )
        mcp = await t.credentials.create(
            vault_id=vault.id,
            display_name="mcp",
            auth={
                "type": "mcp_oauth",
                "mcp_server_url": "https://mcp.example.com/sse",
                "access_token": ACCESS,
                "refresh_token": REFRESH,
                "client_secret": CLIENT_SECRET,
                "token_endpoint": "https://mcp.example.com/token",
            },
        )
        refreshed = await t.credentials.refresh(
            mcp.id, expected=REFRESH, access_token=NEW_ACCESS, refresh_token=NEW_REFRESH
        )
        with pytest.raises(Conflict) as lost:
            await t.credentials.refresh(mcp.id, expected=REFRESH, access_token="x", refresh_token="y")
        assert found_in(repr(await t.credentials.reveal(bearer.id))) == [BEARER]  # the scan does find a secret
        agent = await t.agents.create(name="coder", model="m")
        env = await t.environments.create(name="py")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, vault_ids=[vault.id])
        await t.session_secrets.put(session.id, "GITHUB_TOKEN", SESSION_SECRET)
        await t.sessions.post(session.id, [{"type": "user.message", "content": [{"type": "text", "text": "go"}]}])
        async with t.sessions.actor(session.id) as actor:
            await actor.promote()
            sandbox = await actor.sandbox()
            sandbox.set_secrets({"SANDBOX_TOKEN": SANDBOX_SECRET})
            result = await sandbox.exec('echo "token=$SANDBOX_TOKEN"', timeout=30, secrets=["SANDBOX_TOKEN"])
            assert result.exit_code == 0 and result.stdout.strip() == "token=***"
            await actor.append([{"type": "agent.message", "content": [{"type": "text", "text": result.stdout}]}])
        stranger = oma.backend("vaults").credentials(t._ref, type(oma.keys)("another-root-secret-0123456789"))  # type: ignore[attr-defined]
        with pytest.raises(SecretUnreadable) as unreadable:
            await stranger.reveal(bearer.id)
        events = await t.sessions.events(session.id, after=0, limit=100)
        shown += [oma, t, t.vaults, t.credentials, t.session_secrets, t.sessions, oma.keys, tenant, vault, bearer]
        shown += [mcp, refreshed, session, await t.sessions.get(session.id), events, *events.items]
        shown += [await t.credentials.list(vault_id=vault.id), await t.vaults.list(), lost.value, unreadable.value]
        shown += [str(lost.value), str(unreadable.value), lost.value.details, unreadable.value.details]
        for backend in oma.backends.values():
            shown.append(backend)
        tables = await oma.backend("vaults").client.fetch_all(  # type: ignore[attr-defined]
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
        pg_rows = []
        for row in tables:
            pg_rows += await oma.backend("vaults").client.fetch_all(  # type: ignore[attr-defined]
                f'SELECT t::text AS r FROM "{row["tablename"]}" t'
            )
        assert len(pg_rows) > 2
    assert {"credentials", "vaults"} <= {r["tablename"] for r in tables}

    leaks: dict[str, list[str]] = {}
    for row in pg_rows:
        leaks.setdefault("postgres", []).extend(found_in(row["r"]))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # noqa: ASYNC240 (after the platform closed)
    assert any(p.name == "openma.db" for p in files) and any("blobs" in p.parts for p in files)
    for path in files:
        leaks.setdefault(str(path.relative_to(tmp_path)), []).extend(found_in(path.read_bytes().decode("latin-1")))
    logs = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    leaks["logs"] = found_in(logs)
    leaks["telemetry"] = found_in(repr(telemetry.records))
    for obj in shown:
        text = repr(obj)
        if type(obj).__module__ == "openma.models" or isinstance(obj, Page):
            text += to_json(obj)
        leaks.setdefault("reprs", []).extend(f"{type(obj).__name__}: {f}" for f in found_in(text))
    assert {where: found for where, found in leaks.items() if found} == {}
    assert session.id in logs and session.id in repr(telemetry.records), "the logs and telemetry saw the session"
    assert any("snapshots" in p.parts or "snapshots" in str(p) for p in files), "no workspace snapshot was scanned"
