"""Opening the E2B and Daytona providers: configuration errors, missing SDKs, the asyncio requirement, the
registry, and the ``sandboxes sweep`` command (kept apart from the provider tests, whose module-wide
providers hold the event loop open)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from openma.core.sweeper import parse_duration
from openma.errors import ConfigError, InvalidInput
from openma.ports.sandbox import SandboxSpec

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["e2b", "daytona"])
def which(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_bad_api_key_is_a_config_error(
    which: str, request: pytest.FixtureRequest, remote_spec: Callable[..., SandboxSpec]
) -> None:
    running = request.getfixturevalue(f"{which}_fake")
    module = __import__(f"openma.adapters.sandboxes.{which}", fromlist=["open_sandbox_provider"])
    provider = await module.open_sandbox_provider(running.settings(**{f"{which}_api_key": "wrong"}), blobs=None)
    try:
        with pytest.raises(ConfigError):
            await provider.create(remote_spec())
    finally:
        await provider.aclose()


async def test_missing_api_key_is_a_config_error(which: str) -> None:
    from openma.settings import Settings

    module = __import__(f"openma.adapters.sandboxes.{which}", fromlist=["open_sandbox_provider"])
    with pytest.raises(ConfigError, match="API key"):
        await module.open_sandbox_provider(Settings(), blobs=None)


async def test_missing_sdk_names_the_extra(which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from openma.settings import Settings

    module = __import__(f"openma.adapters.sandboxes.{which}", fromlist=["open_sandbox_provider"])
    monkeypatch.setitem(sys.modules, which, None)
    with pytest.raises(ConfigError, match=rf"pip install 'openma\[{which}\]'"):
        await module.open_sandbox_provider(Settings(**{f"{which}_api_key": "k"}), blobs=None)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_refuses_trio(which: str) -> None:
    from openma.settings import Settings

    module = __import__(f"openma.adapters.sandboxes.{which}", fromlist=["open_sandbox_provider"])
    with pytest.raises(ConfigError, match="asyncio"):
        await module.open_sandbox_provider(Settings(**{f"{which}_api_key": "k"}), blobs=None)


async def test_registry_finds_both_factories(which: str) -> None:
    from openma import registry

    factory = registry.sandboxes.load(which)
    assert factory.__module__ == f"openma.adapters.sandboxes.{which}"


def test_parse_duration() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("1.5d") == timedelta(hours=36)
    assert parse_duration("30") == timedelta(seconds=30)
    for bad in ("", "2x", "-1h", "h"):
        with pytest.raises(InvalidInput):
            parse_duration(bad)


def test_sweep_command(e2b_fake: Any) -> None:
    from click.testing import CliRunner

    from openma.cli import main

    env = {
        "E2B_API_KEY": e2b_fake.fake.API_KEY,
        "E2B_API_URL": e2b_fake.url,
        "E2B_SANDBOX_URL": e2b_fake.url,
        "OPENMA_SANDBOX": "e2b",
    }
    result = CliRunner().invoke(main, ["sandboxes", "sweep", "--older-than", "30d", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "e2b: would destroy 0 sandbox(es) older than 30d" in result.output
    bad = CliRunner().invoke(main, ["sandboxes", "sweep", "--older-than", "soon"], env=env)
    assert bad.exit_code == 2 and "invalid duration" in bad.output


def test_provider_settings_from_env_and_hidden_keys() -> None:
    from openma.settings import Settings

    env = {
        "E2B_API_KEY": "e2b-secret-key",
        "E2B_DOMAIN": "e2b.example",
        "E2B_API_URL": "http://127.0.0.1:1",
        "E2B_SANDBOX_URL": "http://127.0.0.1:2",
        "E2B_TEMPLATE": "tpl",
        "DAYTONA_API_KEY": "daytona-secret-key",
        "DAYTONA_API_URL": "http://127.0.0.1:3/api",
        "DAYTONA_TARGET": "eu",
        "DAYTONA_IMAGE": "python:3.12-slim",
    }
    settings = Settings.from_env(env)
    assert (settings.e2b_api_key, settings.e2b_domain, settings.e2b_template) == (
        "e2b-secret-key",
        "e2b.example",
        "tpl",
    )
    assert (settings.e2b_api_url, settings.e2b_sandbox_url) == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert (settings.daytona_api_key, settings.daytona_api_url) == ("daytona-secret-key", "http://127.0.0.1:3/api")
    assert (settings.daytona_target, settings.daytona_image) == ("eu", "python:3.12-slim")
    shown = repr(settings)
    assert "e2b-secret-key" not in shown and "daytona-secret-key" not in shown
    assert "e2b_api_key='***'" in shown and "e2b.example" in shown
