"""Capabilities an adapter declares, so the contracts skip (with the reason) what it does not claim.

In the spirit of SQLAlchemy's ``Requirements``: an adapter's test class sets ``capabilities`` to the
names it supports; a contract test marked ``@requires("name")`` is skipped when the name is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

import pytest

from openma.ports.sandbox import CAPABILITIES as SANDBOX_CAPABILITIES

F = TypeVar("F", bound=Callable[..., Any])

#: Every capability a contract may ask for, with what it means.
KNOWN: Final[dict[str, str]] = {
    "transactions": "multi-row writes are atomic (a failed write leaves nothing behind)",
    "concurrent_writers": "several tasks may write at once and conditional updates stay exact",
    "unicode_casefold_search": "the q filter matches case-insensitively beyond ASCII",
    "multi_process": "several processes may share the backend's storage",
    "nested_keys": "a blob key and keys below it (such as 'a' and 'a/b') may coexist",
    **SANDBOX_CAPABILITIES,
}


def requires(*names: str) -> Callable[[F], F]:
    """Skip the decorated contract test unless the adapter declares every capability in ``names``."""
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}; known: {sorted(KNOWN)}")

    def mark(fn: F) -> F:
        fn._openma_requires = names  # type: ignore[attr-defined]
        return fn

    return mark


def check_requirements(instance: Any, request: pytest.FixtureRequest) -> None:
    """Called by the contracts' autouse fixture: skip when a required capability is not declared."""
    fn = getattr(request.function, "_openma_requires", ())
    declared = set(getattr(instance, "capabilities", ()))
    missing = [n for n in fn if n not in declared]
    if missing:
        pytest.skip(f"adapter does not declare {', '.join(missing)} ({'; '.join(KNOWN[n] for n in missing)})")
