"""Environments on the SQL family: where a session's tools run."""

from __future__ import annotations

from typing import Any, Final

from openma.adapters.sql.entity import TenantBoundStore, optional_text
from openma.core import validate
from openma.core.clock import ms_to_datetime
from openma.core.jsonutil import dumps, loads
from openma.models import Environment
from openma.ports.sql import Row

MAX_CONFIG_BYTES: Final = 256_000
MAX_DESCRIPTION: Final = 10_000


def _config(value: Any) -> dict[str, Any]:
    return validate.json_object(value, "config", max_bytes=MAX_CONFIG_BYTES)


class SqlEnvironmentStore(TenantBoundStore[Environment]):
    """Environments of one tenant; ``update`` writes only the named columns (see :meth:`TenantBoundStore._update`)."""

    table = "environments"
    prefix = "env"
    noun = "environment"
    fields = {
        "name": validate.name,
        "description": optional_text("description", max_len=MAX_DESCRIPTION),
        "config": _config,
    }

    def from_row(self, row: Row) -> Environment:
        config, metadata = loads(row["config"]), loads(row["metadata"])
        return Environment(**self._common(row), description=row["description"], config=config, metadata=metadata)

    async def create(
        self,
        *,
        name: str,
        config: dict[str, Any] | None = None,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> Environment:
        name = validate.name(name)
        cfg = _config(config)
        description = validate.text(description, "description", max_len=MAX_DESCRIPTION)
        meta = validate.metadata(metadata)
        values = {"name": name, "description": description, "config": dumps(cfg), "metadata": dumps(meta)}
        env_id, now = await self._create(values)
        created = ms_to_datetime(now)
        return Environment(env_id, self.tenant_id, name, description, cfg, meta, created, created, None)

    async def update(self, environment_id: str, **changes: Any) -> Environment:
        """Replace ``name``/``description``/``config`` and merge a ``metadata`` patch; only what is named is written."""
        return await self._update(environment_id, changes)
