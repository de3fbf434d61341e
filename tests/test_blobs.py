"""The fsspec blob store through the conformance kit on file://, memory:// and S3 (moto on loopback), on
asyncio and on trio (file and memory hop to threads; S3 crosses to the adapter's own asyncio loop)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openma.adapters.fsspec_blobs import FsspecBlobStore
from openma.testing import BlobStoreContract
from tests.fixtures.s3 import S3Endpoint

MIB = 1 << 20


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestFileBlobs(BlobStoreContract):
    capabilities = {"concurrent_writers", "multi_process", "trio"}

    @pytest.fixture
    async def blob_store(self, tmp_path: Path) -> AsyncIterator[FsspecBlobStore]:
        store = await FsspecBlobStore.open(f"file://{tmp_path}/blobs")
        yield store
        await store.aclose()


class TestMemoryBlobs(BlobStoreContract):
    capabilities = {"concurrent_writers", "trio"}

    @pytest.fixture
    async def blob_store(self) -> AsyncIterator[FsspecBlobStore]:
        import fsspec

        root = f"memory://openma-test-{uuid.uuid4().hex}"
        store = await FsspecBlobStore.open(root)
        yield store
        await store.aclose()
        fsspec.filesystem("memory").rm(root.split("://", 1)[1], recursive=True)


class TestS3Blobs(BlobStoreContract):
    capabilities = {"concurrent_writers", "multi_process", "nested_keys", "trio"}

    @pytest.fixture
    async def blob_store(self, s3_endpoint: S3Endpoint, s3_blob_url: str) -> AsyncIterator[FsspecBlobStore]:
        # 5 MiB parts (the S3 minimum), so the contract's 12 MiB object is a three-part upload
        store = await FsspecBlobStore.open(
            s3_blob_url, storage_options=s3_endpoint.storage_options(), part_size=5 * MIB
        )
        yield store
        await store.aclose()
