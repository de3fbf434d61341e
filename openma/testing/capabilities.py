"""Capabilities an adapter declares, so the contracts skip (with the reason) what it does not claim.

One style for every kit (stores, kv, event log, actor, blobs, sandbox), in the spirit of SQLAlchemy's
``Requirements``: the adapter's *test class* sets ``capabilities`` to the names it supports; a contract test
marked ``@requires("name")`` is skipped when the name is absent. Every contract reads the declaration the
same way (:func:`check_requirements`, from its autouse fixture).

Some ports also make the adapter itself report what it can do at run time, because the core reads it
(``Sandbox.capabilities``; a blob store may have a ``capabilities`` attribute too). The declaration stays on
the test class; the kit checks the two agree (:func:`check_adapter_agrees`): the class may claim only what
the adapter reports, apart from ``trio``, which is about the test run, not the adapter.

A class that runs one contract against several adapters (a parametrized fixture, as openma's own suite does
for its SQL engines) may instead provide a fixture named ``adapter_capabilities``; when a test requests it
(for instance through ``pytest.mark.usefixtures("adapter_capabilities")``), its value replaces the class
attribute for that test.

Every contract runs on whichever anyio backend the ``anyio_backend`` fixture picks. On ``trio`` a test is
skipped unless the adapter declares ``trio``: run the contracts on both backends by parametrizing
``anyio_backend`` (``@pytest.fixture(params=["asyncio", "trio"])``), as anyio's pytest plugin documents.
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
    "trio": "the adapter runs on trio as well as on asyncio",
    **SANDBOX_CAPABILITIES,
}


#: Capabilities about the test run rather than the adapter: declared on the test class, never reported.
RUN_ONLY: Final = frozenset({"trio"})


def requires(*names: str) -> Callable[[F], F]:
    """Skip the decorated contract test unless the adapter declares every capability in ``names``."""
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}; known: {sorted(KNOWN)}")

    def mark(fn: F) -> F:
        fn._openma_requires = names  # type: ignore[attr-defined]
        return fn

    return mark


def declared_capabilities(instance: Any, request: pytest.FixtureRequest) -> frozenset[str]:
    """What the adapter under test declares: the ``adapter_capabilities`` fixture, else the class attribute."""
    if "adapter_capabilities" in request.fixturenames:
        declared = request.getfixturevalue("adapter_capabilities")
    else:
        declared = getattr(instance, "capabilities", ())
    unknown = sorted(set(declared) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown capabilities declared: {unknown}; known: {sorted(KNOWN)}")
    return frozenset(declared)


def check_requirements(instance: Any, request: pytest.FixtureRequest) -> None:
    """Called by the contracts' autouse fixture: skip when a required capability is not declared, or when the
    test runs on trio and the adapter does not declare ``trio``."""
    required = list(getattr(request.function, "_openma_requires", ()))
    if "anyio_backend" in request.fixturenames and _backend_name(request.getfixturevalue("anyio_backend")) == "trio":
        required.append("trio")
    declared = declared_capabilities(instance, request)
    missing = [n for n in required if n not in declared]
    if missing:
        pytest.skip(f"adapter does not declare {', '.join(missing)} ({'; '.join(KNOWN[n] for n in missing)})")


def _backend_name(backend: object) -> str:
    """``anyio_backend`` is a name or a ``(name, options)`` pair."""
    return str(backend[0] if isinstance(backend, tuple) else backend)


def check_adapter_agrees(instance: Any, request: pytest.FixtureRequest, adapter: object) -> None:
    """Fail unless ``adapter``'s own ``capabilities`` (when it reports any) are known names and cover every
    capability the test class declares (:data:`RUN_ONLY` aside)."""
    reported = getattr(adapter, "capabilities", None)
    if reported is None:
        return
    reported = frozenset(reported)
    unknown = sorted(reported - set(KNOWN))
    assert not unknown, f"the adapter reports unknown capabilities {unknown}; known: {sorted(KNOWN)}"
    claimed = declared_capabilities(instance, request) - RUN_ONLY
    assert claimed <= reported, (
        f"the test class claims {sorted(claimed - reported)} but the adapter reports only {sorted(reported)}"
    )
