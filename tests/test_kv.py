"""The SQL KV store through the conformance kit, on every engine of the ``store_backend`` fixture."""

from __future__ import annotations

from openma.testing import KVContract


class TestSqlKV(KVContract):
    capabilities = {"transactions", "concurrent_writers", "multi_process"}
