"""The public models: frozen, equal by value, unhashable when they hold containers (and say so), and JSON-ready
through ``to_dict()`` and ``openma.to_json``; the fakes a host's tests need are in ``openma.testing``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

import openma
import openma.testing
from openma import Agent, Event, Page, Platform, Settings, Tenant, to_json
from openma.models import GcReport, Stream, to_dict

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _tenant() -> Tenant:
    return Tenant(id="tnt_1", name="acme", metadata={"plan": "pro"}, created_at=NOW)


def test_models_are_frozen_equal_by_value_and_unhashable_when_they_hold_containers() -> None:
    tenant = _tenant()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tenant.name = "other"  # type: ignore[misc]
    assert tenant == _tenant()
    event = Event(id="evt_1", type="user.message", seq=1, created_at=NOW, data={"type": "user.message"})
    for unhashable in (tenant, event, Page([tenant])):
        with pytest.raises(TypeError, match=f"unhashable type: '{type(unhashable).__name__}'"):
            hash(unhashable)
    assert {tenant.id: tenant}[tenant.id] is tenant  # key by id
    report = GcReport(events=2)
    stream = Stream("str_1", "ses_1", "model", "open", None, "", 0, NOW)
    assert len({report, GcReport(events=2), stream}) == 2  # immutable fields only: hashable


def test_to_dict_is_json_ready() -> None:
    agent = Agent(
        id="agt_1",
        tenant_id="tnt_1",
        name="coder",
        model={"id": "m", "speed": "fast"},
        system="",
        description="",
        tools=[{"type": "bash"}],
        mcp_servers=[],
        skills=[],
        metadata={},
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )
    data = agent.to_dict()
    assert data["created_at"] == "2026-01-02T03:04:05.678000+00:00" and data["archived_at"] is None
    assert data["model"] == {"id": "m", "speed": "fast"} and data["tools"] == [{"type": "bash"}]
    assert set(data) == {f.name for f in attrs.fields(Agent)}
    assert datetime.fromisoformat(data["updated_at"]) == NOW
    data["tools"].append({"type": "read"})
    assert agent.tools == [{"type": "bash"}]  # a copy: the model is untouched
    page = Page([_tenant()], next_cursor="c1")
    assert page.to_dict() == {"items": [_tenant().to_dict()], "next_cursor": "c1"}
    assert GcReport(blobs=3).to_dict()["blobs"] == 3


def test_to_json_takes_models_pages_and_containers_of_them() -> None:
    tenant = _tenant()
    assert json.loads(to_json(tenant)) == tenant.to_dict()
    assert json.loads(to_json(Page([tenant]))) == {"items": [tenant.to_dict()], "next_cursor": None}
    assert json.loads(to_json([tenant, {"k": tenant}])) == [tenant.to_dict(), {"k": tenant.to_dict()}]
    assert to_json({"ü": "ü"}) == '{"ü": "ü"}'  # UTF-8 text, not escapes
    assert "\n" in to_json(tenant, indent=2)
    assert to_dict({"t": timedelta(seconds=1.5), "b": b"\x00\xff", 1: (1, 2)}) == {
        "t": 1.5,
        "b": "AP8=",
        "1": [1, 2],
    }
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        to_json(object())
    with pytest.raises(ValueError):
        to_json(float("nan"))
    blob = openma.BlobInfo("k", 1, "e", "text/plain", {}, NOW)  # value types of the ports serialize too
    assert json.loads(to_json(blob))["created_at"] == NOW.isoformat()


async def test_a_host_test_records_telemetry_with_the_testing_fakes(tmp_path: Path) -> None:
    assert openma.testing.__all__ == [
        "KNOWN_CAPABILITIES",
        "ActorContract",
        "AgentStoreContract",
        "BackendFactory",
        "BlobStoreContract",
        "CredentialContract",
        "EnvironmentStoreContract",
        "EventLogContract",
        "KVContract",
        "MemoryTelemetry",
        "SandboxContract",
        "Scripted",
        "ScriptedModel",
        "TelemetryRecord",
        "TenantStoreContract",
        "UsageContract",
        "VaultContract",
        "requires",
    ]
    for name in openma.testing.__all__:
        assert getattr(openma.testing, name) is not None
    telemetry = openma.testing.MemoryTelemetry()
    settings = Settings(sqlite_path=str(tmp_path / "p.db"), blob_url=f"file://{tmp_path}/blobs")
    async with Platform.open(settings, telemetry=telemetry) as oma:
        assert oma.telemetry is telemetry
        telemetry.emit("host.check", token="secret-value", n=1)
    assert telemetry.of("host.check") == [{"token": "***", "n": 1}]
    assert isinstance(telemetry.records[-1], openma.testing.TelemetryRecord)


def test_to_json_of_settings_never_shows_a_secret() -> None:
    """``openma.to_json`` walks any attrs object, settings included: secrets come out masked, never in clear."""
    import openma

    settings = openma.Settings(
        root_secret="supersecretrootkey123",
        postgres_url="postgresql://u:pw0rd@db.example/app",
        blob_options={"key": "AKIAEXAMPLE", "secret": "s3cr3tvalue"},
        s3_secret_access_key="s3-secret-access",
        anthropic_api_key="sk-ant-example-key",
    )
    text = openma.to_json(settings)
    for secret in (
        "supersecretrootkey123",
        "pw0rd",
        "AKIAEXAMPLE",
        "s3cr3tvalue",
        "s3-secret-access",
        "sk-ant-example",
    ):
        assert secret not in text, secret
    data = json.loads(text)
    assert data["root_secret"] == "***"
    assert data["store_backends"] == {"default": "cf"}
    assert data["postgres"]["url"] == "postgresql://u:***@db.example/app"


def test_the_fakes_and_the_demo_import_without_pytest() -> None:
    """A bare install has no pytest: ``ScriptedModel``, ``MemoryTelemetry`` and the demo must still import;
    only the contracts need pytest."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "import openma.demo\n"
        "from openma.testing import MemoryTelemetry, ScriptedModel\n"
        "try:\n"
        "    from openma.testing import EventLogContract\n"
        "except ImportError:\n"
        "    print('contracts need pytest')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "contracts need pytest"
