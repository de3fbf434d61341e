"""openma's SessionActor on both engines, through the same contract third parties use."""

from __future__ import annotations

from openma.testing.actor import ActorContract

SQL_CAPABILITIES = {"transactions", "concurrent_writers", "multi_process"}


class TestActor(ActorContract):
    capabilities = SQL_CAPABILITIES
