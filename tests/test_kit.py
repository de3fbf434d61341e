"""The conformance kit's own machinery: capability declarations and the trio rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from openma.testing.capabilities import check_adapter_agrees, check_requirements, requires


class FakeRequest:
    """The parts of ``pytest.FixtureRequest`` the kit reads."""

    def __init__(self, function: Callable[..., Any], fixtures: dict[str, Any]) -> None:
        self.function = function
        self.fixturenames = list(fixtures)
        self._fixtures = fixtures

    def getfixturevalue(self, name: str) -> Any:
        return self._fixtures[name]


class Adapter:
    capabilities = frozenset({"transactions"})


def plain() -> None: ...


@requires("concurrent_writers")
def needs_writers() -> None: ...


def check(function: Callable[..., Any], **fixtures: Any) -> str | None:
    """``None`` when the test would run, else the skip reason."""
    try:
        check_requirements(Adapter(), FakeRequest(function, fixtures))  # type: ignore[arg-type]
    except pytest.skip.Exception as skip:
        return str(skip.msg)
    return None


def test_a_missing_capability_skips_with_its_meaning() -> None:
    reason = check(needs_writers, anyio_backend="asyncio")
    assert reason is not None and "concurrent_writers" in reason and "conditional updates" in reason
    assert check(plain, anyio_backend="asyncio") is None


@pytest.mark.parametrize("backend", ["trio", ("trio", {"restrict_keyboard_interrupt_to_checkpoints": True})])
def test_trio_runs_only_for_adapters_that_declare_it(backend: Any) -> None:
    reason = check(plain, anyio_backend=backend)
    assert reason is not None and "does not declare trio" in reason
    assert check(plain, anyio_backend=backend, adapter_capabilities={"trio"}) is None
    assert check(plain, anyio_backend="asyncio") is None
    assert check(plain) is None  # not an anyio test at all


def test_adapter_capabilities_replace_the_class_attribute() -> None:
    assert check(needs_writers, adapter_capabilities={"concurrent_writers"}) is None
    assert check(needs_writers, adapter_capabilities=set()) is not None


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown capabilities"):
        requires("teleportation")
    with pytest.raises(ValueError, match="unknown capabilities declared"):
        check(plain, adapter_capabilities={"transactions", "teleportation"})


class Reporting:
    def __init__(self, *names: str) -> None:
        self.capabilities = frozenset(names)


def test_the_test_class_claims_only_what_the_adapter_reports() -> None:
    request: Any = FakeRequest(plain, {"adapter_capabilities": {"transactions", "trio"}})
    check_adapter_agrees(Adapter(), request, Reporting("transactions", "snapshot"))  # trio is about the run
    check_adapter_agrees(Adapter(), request, object())  # an adapter that reports nothing is not checked
    with pytest.raises(AssertionError, match="claims \\['transactions'\\]"):
        check_adapter_agrees(Adapter(), request, Reporting("snapshot"))
    with pytest.raises(AssertionError, match="unknown capabilities \\['teleportation'\\]"):
        check_adapter_agrees(Adapter(), request, Reporting("transactions", "teleportation"))
    plain_request: Any = FakeRequest(plain, {})
    check_adapter_agrees(Adapter(), plain_request, Reporting("transactions"))  # the class attribute
    with pytest.raises(AssertionError):
        check_adapter_agrees(Adapter(), plain_request, Reporting())
