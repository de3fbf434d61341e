"""Secrets at rest: the key ring, where the root secret comes from, and ciphertexts bound to their row."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openma import ConfigError, Platform, SecretUnreadable, Settings
from openma.core.secrets import FORMAT, KeyRing, Place, key_id_of
from openma.keyfile import KEY_FILE

pytestmark = pytest.mark.anyio

ROOT = "test-root-secret-0123456789abcdef"
OLD = "old-root-secret-0123456789abcdefgh"
WHERE = Place("tnt_a", "credentials", "crd_1", "auth")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_round_trip(plaintext: bytes) -> None:
    ring = KeyRing(ROOT)
    token = ring.seal(plaintext, "credentials", WHERE)
    assert token.startswith(f"{FORMAT}.{ring.key_id}.") and key_id_of(token) == ring.key_id
    assert ring.open(token, "credentials", WHERE) == plaintext


@pytest.mark.parametrize(
    ("purpose", "where"),
    [
        ("session_secrets", WHERE),
        ("credentials", Place("tnt_b", "credentials", "crd_1", "auth")),
        ("credentials", Place("tnt_a", "session_secrets", "crd_1", "auth")),
        ("credentials", Place("tnt_a", "credentials", "crd_2", "auth")),
        ("credentials", Place("tnt_a", "credentials", "crd_1", "other")),
    ],
)
def test_a_ciphertext_opens_only_where_it_was_sealed(purpose: str, where: Place) -> None:
    ring = KeyRing(ROOT)
    token = ring.seal(b"ghp_secret_value", "credentials", WHERE)
    with pytest.raises(SecretUnreadable) as caught:
        ring.open(token, purpose, where)
    assert caught.value.code == "secret_unreadable" and caught.value.key_id == ring.key_id
    assert "ghp_secret_value" not in str(caught.value) and ROOT not in str(caught.value)


def test_tampered_or_malformed_values_are_typed_errors() -> None:
    ring = KeyRing(ROOT)
    token = ring.seal(b"x", "credentials", WHERE)
    # A character well inside the payload: every one of its bits is used (the last characters before the
    # padding carry unused bits, and changing only those would decode to the same bytes).
    flipped = token[:-10] + ("A" if token[-10] != "A" else "B") + token[-9:]
    for bad in (flipped, "plaintext", f"{FORMAT}.{ring.key_id}.!!!", f"{FORMAT}.{ring.key_id}."):
        with pytest.raises(SecretUnreadable):
            ring.open(bad, "credentials", WHERE)


def test_previous_keys_decrypt_and_unknown_key_ids_are_named() -> None:
    old = KeyRing(OLD)
    token = old.seal(b"v", "credentials", WHERE)
    with pytest.raises(SecretUnreadable, match=old.key_id) as caught:
        KeyRing(ROOT).open(token, "credentials", WHERE)
    assert OLD not in str(caught.value) and "OPENMA_ROOT_SECRET_PREVIOUS" in str(caught.value)
    ring = KeyRing(ROOT, [OLD])
    assert ring.key_ids == (KeyRing(ROOT).key_id, old.key_id)
    assert ring.open(token, "credentials", WHERE) == b"v"
    resealed = ring.reseal(token, "credentials", WHERE)
    assert resealed is not None and key_id_of(resealed) == ring.key_id
    assert ring.reseal(resealed, "credentials", WHERE) is None
    assert ROOT not in repr(ring) and OLD not in repr(ring)


@pytest.mark.parametrize("bad", ["short", "", "x" * 15])
def test_a_short_root_secret_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        KeyRing(bad)
    with pytest.raises(ConfigError, match="PREVIOUS"):
        KeyRing(ROOT, [bad[:-1] or "x"])


def test_previous_secrets_come_from_the_environment_and_stay_hidden() -> None:
    s = Settings.from_env(
        {"OPENMA_ROOT_SECRET": ROOT, "OPENMA_ROOT_SECRET_PREVIOUS": f" {OLD} , second-old-secret-0123 ,"}
    )
    assert s.root_secret_previous == (OLD, "second-old-secret-0123")
    assert OLD not in repr(s) and ROOT not in repr(s) and "second-old" not in repr(s)
    with pytest.raises(ConfigError, match="root_secret_previous"):
        Settings(root_secret_previous=[1])
    with pytest.raises(ConfigError, match="OPENMA_ROOT_SECRET_PREVIOUS"):
        Settings(local_sandbox_pass_env="OPENMA_ROOT_SECRET_PREVIOUS")


async def test_the_embedded_default_keeps_a_generated_key_file(tmp_path: Path) -> None:
    settings = Settings(sqlite_path=str(tmp_path / "data" / "openma.db"), blob_url=f"file://{tmp_path}/b")
    async with Platform.open(settings) as oma:
        tenant = await oma.tenants.create(name="t")
        t = oma.tenant(tenant.id)
        vault = await t.vaults.create(name="v")
        cred = await t.credentials.create(
            vault_id=vault.id, display_name="c", auth={"type": "static_bearer", "token": "tok", "hosts": ["a.io"]}
        )
    key_file = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    first = key_file.read_text()
    async with Platform.open(settings) as oma:
        assert (await oma.tenant(tenant.id).credentials.reveal(cred.id))["token"] == "tok"
    assert key_file.read_text() == first
    async with Platform.open(Settings(sqlite_path=settings.sqlite_path, root_secret=ROOT)) as oma:
        with pytest.raises(SecretUnreadable):
            await oma.tenant(tenant.id).credentials.reveal(cred.id)


async def test_a_short_root_secret_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OPENMA_ROOT_SECRET"):
        await Platform.connect(Settings(sqlite_path=str(tmp_path / "x.db"), root_secret="short"))
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    "placement", [{"default": "pg"}, {"default": "cf", "vaults": "pg"}, {"default": "cf", "sessions": "pg"}]
)
async def test_stores_holding_secrets_on_a_shared_backend_need_a_root_secret_at_start(
    placement: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every host must derive the same keys, so a shared secret store refuses to open without the root secret,
    before anything is created (no database, no key file); the URL is never even dialled."""
    monkeypatch.delenv("OPENMA_ROOT_SECRET", raising=False)
    settings = Settings(
        sqlite_path=str(tmp_path / "x.db"),
        postgres_url="postgresql://nobody@127.0.0.1:9/none",
        store_backends=placement,
        blob_url=f"file://{tmp_path}/b",
    )
    with pytest.raises(ConfigError, match="OPENMA_ROOT_SECRET"):
        await Platform.connect(settings)
    assert not (tmp_path / "x.db").exists() and not (tmp_path / KEY_FILE).exists()
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_ciphertext_copied_to_another_row_does_not_decrypt(
    engine: str, engine_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    url = f"sqlite:///{engine_url}" if engine == "sqlite" else engine_url
    auth = {"type": "static_bearer", "token": "ghp_victim_token_0123", "hosts": ["api.github.com"]}
    async with Platform.from_url(url, blob_url=f"file://{tmp_path}/b", root_secret=ROOT) as oma:
        a, b = await oma.tenants.create(name="a"), await oma.tenants.create(name="b")
        ta, tb = oma.tenant(a.id), oma.tenant(b.id)
        va, vb = await ta.vaults.create(name="v"), await tb.vaults.create(name="v")
        victim = await ta.credentials.create(vault_id=va.id, display_name="victim", auth=auth)
        mine = await ta.credentials.create(vault_id=va.id, display_name="mine", auth={**auth, "token": "mine-0123"})
        other = await tb.credentials.create(vault_id=vb.id, display_name="other", auth={**auth, "token": "b-0123"})
        client = oma.backend("vaults").client  # type: ignore[attr-defined]
        row = await client.fetch_one("SELECT auth_sealed FROM credentials WHERE id = ?", (victim.id,))
        for target in (mine.id, other.id):
            await client.execute("UPDATE credentials SET auth_sealed = ? WHERE id = ?", (row["auth_sealed"], target))
        for store, target in ((ta.credentials, mine.id), (tb.credentials, other.id)):
            with pytest.raises(SecretUnreadable) as caught:
                await store.reveal(target)
            assert "ghp_victim" not in str(caught.value) and caught.value.key_id == oma.keys.key_id
        assert (await ta.credentials.reveal(victim.id))["token"] == "ghp_victim_token_0123"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sessions_name_their_vaults_and_keep_secrets_until_deleted(
    engine: str, engine_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    from openma import Conflict, InvalidInput, NotFound

    url = f"sqlite:///{engine_url}" if engine == "sqlite" else engine_url
    async with Platform.from_url(url, blob_url=f"file://{tmp_path}/b", root_secret=ROOT) as oma:
        a, b = await oma.tenants.create(name="a"), await oma.tenants.create(name="b")
        t, other = oma.tenant(a.id), oma.tenant(b.id)
        agent = await t.agents.create(name="a", model="m")
        env = await t.environments.create(name="e")
        vault = await t.vaults.create(name="v")
        foreign = await other.vaults.create(name="v")
        session = await t.sessions.create(agent_id=agent.id, environment_id=env.id, vault_ids=[vault.id, vault.id])
        assert session.vault_ids == [vault.id] and (await t.sessions.get(session.id)).vault_ids == [vault.id]
        for bad, error in (([foreign.id], NotFound), (["vlt_" + "0" * 26], NotFound), (["x"], InvalidInput)):
            with pytest.raises(error):
                await t.sessions.create(agent_id=agent.id, environment_id=env.id, vault_ids=bad)
        with pytest.raises(InvalidInput):
            await t.sessions.create(agent_id=agent.id, environment_id=env.id, vault_ids=vault.id)  # type: ignore[arg-type]
        await t.vaults.archive(vault.id)
        with pytest.raises(Conflict):
            await t.sessions.create(agent_id=agent.id, environment_id=env.id, vault_ids=[vault.id])

        secrets = t.session_secrets
        await secrets.put(session.id, "GITHUB_TOKEN", "ghp_session_secret_1")
        await secrets.put(session.id, "GITHUB_TOKEN", "ghp_session_secret_2")
        await secrets.put(session.id, "NPM_TOKEN", "npm_secret")
        assert await secrets.names(session.id) == ["GITHUB_TOKEN", "NPM_TOKEN"]
        assert await secrets.reveal(session.id, "GITHUB_TOKEN") == "ghp_session_secret_2"
        with pytest.raises(NotFound):
            await other.session_secrets.reveal(session.id, "GITHUB_TOKEN")
        with pytest.raises(NotFound):
            await other.session_secrets.put(session.id, "X", "y")
        with pytest.raises(InvalidInput):
            await secrets.put(session.id, "bad name", "y")
        await secrets.remove(session.id, "NPM_TOKEN")
        with pytest.raises(NotFound):
            await secrets.remove(session.id, "NPM_TOKEN")
        client = oma.backend("sessions").client  # type: ignore[attr-defined]
        await t.sessions.delete(session.id)
        rows = await client.fetch_all("SELECT name FROM session_secrets WHERE session_id = ?", (session.id,))
        assert rows == []
        with pytest.raises(NotFound):
            await secrets.put(session.id, "GITHUB_TOKEN", "again")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_AUTH_KEYS = st.sampled_from(
    ["type", "token", "hosts", "header", "mcp_server_url", "access_token", "refresh_token", "client_secret",
     "token_endpoint", "client_id", "expires_at", "extra"]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_AUTH_KEYS, _JSON | st.sampled_from(["static_bearer", "mcp_oauth", "https://x.io/", ["a.io"]])))
def test_any_auth_is_checked_or_refused_with_a_typed_error(auth: dict[str, object]) -> None:
    from openma import InvalidInput
    from openma.core.credentials import SECRET_FIELDS, check_auth, public_part

    refused: InvalidInput | None = None
    try:
        checked = check_auth(auth)
    except InvalidInput as exc:
        refused = exc
    if refused is not None:
        assert refused.details.get("field", "").startswith("auth")
        return
    assert all(public_part(checked)[field] is None for field in SECRET_FIELDS[checked["type"]])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_stored_text_opens_or_is_secret_unreadable(token: str) -> None:
    ring = KeyRing(ROOT)
    with pytest.raises(SecretUnreadable):
        ring.open(token, "credentials", WHERE)
    with pytest.raises(SecretUnreadable):
        ring.open(f"{FORMAT}.{ring.key_id}.{token}", "credentials", WHERE)


async def test_doctor_says_whether_the_secrets_can_be_sealed(tmp_path: Path) -> None:
    from openma.doctor import diagnose

    base = {"sqlite_path": str(tmp_path / "x.db"), "blob_url": f"file://{tmp_path}/b"}
    shared = Settings(**base, postgres_url="postgresql://nobody@127.0.0.1:9/none", store_backends={"default": "pg"})
    [check] = [c for c in await diagnose(shared) if c.part == "secrets"]
    assert not check.ok and "OPENMA_ROOT_SECRET" in check.detail
    secret = "doctor-root-secret-0123456789"
    [check] = [c for c in await diagnose(attrs.evolve(shared, root_secret=secret)) if c.part == "secrets"]
    assert check.ok and secret not in check.detail
    [check] = [c for c in await diagnose(Settings(**base)) if c.part == "secrets"]
    assert check.ok and "key file" in check.detail
    assert not (tmp_path / KEY_FILE).exists()  # the doctor creates nothing


def test_settings_take_the_root_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a provider SDK's API key: ``Settings(...)`` reads ``OPENMA_ROOT_SECRET`` when it is not given, and
    an explicit value wins."""
    monkeypatch.setenv("OPENMA_ROOT_SECRET", "from-the-environment-0123")
    assert Settings().root_secret == "from-the-environment-0123"
    assert Settings(root_secret="given-explicitly-0123456").root_secret == "given-explicitly-0123456"
    monkeypatch.delenv("OPENMA_ROOT_SECRET")
    assert Settings().root_secret is None
