"""One frozen ``attrs`` configuration class per part of the platform, composed by :class:`openma.Settings`.

:class:`SQLiteConfig`, :class:`PostgresConfig`, :class:`BlobConfig`, :class:`LocalSandboxConfig`,
:class:`E2BConfig`, :class:`DaytonaConfig`, :class:`UpkeepConfig` and :class:`ModelConfig` each hold the knobs
of one adapter (or one job), validated at construction exactly like ``Settings``: a bad value is a
:class:`~openma.errors.ConfigError` whose ``details["field"]`` is the field's *setting name*, the flat name
it has on ``Settings`` and in the docs (``sqlite_readers``, not ``readers``).

Every field is declared with :func:`setting`, which keeps in the field's ``attrs`` metadata what the rest of
openma derives from it: ``setting`` (the flat name), ``env`` (the environment variable ``Settings.from_env``
reads), ``kind`` (how that variable's text is converted: ``str``, ``raw``, ``bool``, ``int``, ``float``,
``json``), ``doc`` (the line of the settings table in ``docs/configuration.md``), ``shown`` (the default as
the docs show it, when not the value itself) and ``secret`` (masked in every ``repr``). There is no other
table of variables: :func:`markdown_table` renders the docs from the same metadata.
"""

from __future__ import annotations

from typing import Any, Final

from openma.config._field import markdown_table, render_docs, setting
from openma.config.egress import EgressConfig
from openma.config.models import ModelConfig
from openma.config.sandboxes import (
    LOCAL_SANDBOX_PASS_ENV,
    BubblewrapConfig,
    DaytonaConfig,
    E2BConfig,
    LocalSandboxConfig,
    UpkeepConfig,
)
from openma.config.stores import PG_SCHEME, BlobConfig, PostgresConfig, SQLiteConfig, normalize_pg_url

#: The parts ``Settings`` composes: its attribute name → the part's class, in the order of the docs.
PARTS: Final[dict[str, type[Any]]] = {
    "sqlite": SQLiteConfig,
    "postgres": PostgresConfig,
    "blobs": BlobConfig,
    "local_sandbox": LocalSandboxConfig,
    "bubblewrap": BubblewrapConfig,
    "e2b": E2BConfig,
    "daytona": DaytonaConfig,
    "upkeep": UpkeepConfig,
    "models": ModelConfig,
    "egress": EgressConfig,
}


__all__ = [
    "LOCAL_SANDBOX_PASS_ENV",
    "PARTS",
    "PG_SCHEME",
    "BlobConfig",
    "BubblewrapConfig",
    "DaytonaConfig",
    "E2BConfig",
    "EgressConfig",
    "LocalSandboxConfig",
    "ModelConfig",
    "PostgresConfig",
    "SQLiteConfig",
    "UpkeepConfig",
    "markdown_table",
    "normalize_pg_url",
    "render_docs",
    "setting",
]
