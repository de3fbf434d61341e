"""The platform's blob store and KV: opened from settings, scoped per tenant."""

from __future__ import annotations

from pathlib import Path

import pytest

import openma
from openma.errors import ConfigError, Conflict, NotFound
from tests.fixtures.s3 import S3Endpoint

pytestmark = pytest.mark.anyio


def settings(tmp_path: Path, **overrides: object) -> openma.Settings:
    overrides.setdefault("blob_url", f"file://{tmp_path}/blobs")
    return openma.Settings(sqlite_path=str(tmp_path / "p.db"), **overrides)  # type: ignore[arg-type]


async def test_tenant_scoped_blobs_and_kv(tmp_path: Path) -> None:
    async with openma.Platform.open(settings(tmp_path)) as oma:
        acme = oma.tenant(await oma.tenants.create(name="acme"))
        globex = oma.tenant(await oma.tenants.create(name="globex"))
        await acme.blobs.put("snapshots/ws.tar", b"acme bytes", content_type="application/x-tar")
        await globex.blobs.put("snapshots/ws.tar", b"globex bytes")
        assert await acme.blobs.get("snapshots/ws.tar") == b"acme bytes"
        assert await globex.blobs.get("snapshots/ws.tar") == b"globex bytes"
        assert [i.key for i in await acme.blobs.list()] == ["snapshots/ws.tar"]
        admin = sorted(i.key for i in await oma.blobs.list("t/"))
        assert admin == sorted(f"t/{t.tenant_id}/snapshots/ws.tar" for t in (acme, globex))
        assert (tmp_path / "blobs" / "t" / acme.tenant_id / "snapshots" / "ws.tar").read_bytes() == b"acme bytes"

        assert await acme.kv.incr("quota:sessions") == 1
        assert await globex.kv.incr("quota:sessions") == 1
        assert await acme.kv.incr("quota:sessions") == 2
        await acme.kv.put("flag", "on")
        assert await globex.kv.get("flag") is None
        assert acme.kv is acme.kv  # built once per scope


async def test_unknown_and_archived_tenants_cannot_write(tmp_path: Path) -> None:
    async with openma.Platform.open(settings(tmp_path)) as oma:
        ghost = oma.tenant("tnt_01h0000000000000000000000z")
        with pytest.raises(NotFound):
            await ghost.blobs.put("k", b"x")
        with pytest.raises(NotFound):
            await ghost.kv.put("k", "v")
        assert [i.key for i in await oma.blobs.list()] == []
        gone = await oma.tenants.create(name="gone")
        await oma.tenants.archive(gone.id)
        with pytest.raises(Conflict):
            await oma.tenant(gone.id).blobs.put("k", b"x")


async def test_blobs_on_s3_from_settings(tmp_path: Path, s3_endpoint: S3Endpoint) -> None:
    s = settings(
        tmp_path,
        blob_url=s3_endpoint.blob_url(),
        s3_endpoint_url=s3_endpoint.url,
        s3_region=s3_endpoint.region,
        s3_access_key_id=s3_endpoint.key,
        s3_secret_access_key=s3_endpoint.secret,
    )
    async with openma.Platform.open(s) as oma:
        t = oma.tenant(await oma.tenants.create(name="acme"))
        await t.blobs.put("a", b"on s3")
        assert await t.blobs.get("a") == b"on s3"


async def test_a_missing_bucket_fails_the_start(tmp_path: Path, s3_endpoint: S3Endpoint) -> None:
    s = settings(
        tmp_path,
        blob_url="s3://no-such-bucket/openma",
        s3_endpoint_url=s3_endpoint.url,
        s3_region=s3_endpoint.region,
        s3_access_key_id=s3_endpoint.key,
        s3_secret_access_key=s3_endpoint.secret,
    )
    with pytest.raises(ConfigError, match="no-such-bucket"):
        await openma.Platform.connect(s)


async def test_closed_platform_refuses_blobs(tmp_path: Path) -> None:
    oma = await openma.Platform.connect(settings(tmp_path))
    await oma.aclose()
    with pytest.raises(ConfigError):
        _ = oma.blobs
