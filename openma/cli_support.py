"""What every ``openma`` command shares: typed errors to exit code 2, settings from the environment, running
a coroutine, durations with their unit."""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import NoReturn, TypeVar

import anyio
import click

from openma.errors import InvalidInput, OpenmaError
from openma.settings import Settings

T = TypeVar("T")


def _fail(exc: OpenmaError) -> NoReturn:
    click.echo(f"error [{exc.code}]: {exc.message}", err=True)
    sys.exit(2)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except OpenmaError as exc:
        _fail(exc)


def _duration(text: str, option: str = "--older-than") -> timedelta:
    """A duration with its unit (``90m``, ``2h``, ``30d``); a bare number is refused, never read as seconds."""
    from openma.core.sweeper import parse_duration

    if re.fullmatch(r"\s*\d+(\.\d+)?\s*", text or ""):
        _fail(
            InvalidInput(
                f"{option} {text.strip()} has no unit; write {text.strip()}d, {text.strip()}h, "
                f"{text.strip()}m or {text.strip()}s"
            )
        )
    try:
        return parse_duration(text)
    except OpenmaError as exc:
        _fail(exc)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return anyio.run(fn)
    except OpenmaError as exc:
        _fail(exc)
    except ExceptionGroup as group:  # several parts failed (closing a platform): report each of ours
        ours, rest = group.split(OpenmaError)
        if ours is None or rest is not None:
            raise
        for error in _leaves(ours):
            click.echo(f"error [{error.code}]: {error.message}", err=True)
        sys.exit(2)


def _leaves(group: BaseExceptionGroup[OpenmaError]) -> list[OpenmaError]:
    out: list[OpenmaError] = []
    for error in group.exceptions:
        out += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return out
