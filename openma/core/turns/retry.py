"""Retrying a model call: retryable :class:`~openma.errors.ModelError`\\ s back off with jitter, up to a limit.

The schedule is ``tenacity``'s ``wait_random_exponential`` (full jitter: a random wait up to
``initial * 2**attempt``, capped at ``max_wait``), so many sessions hitting one rate limit do not come back
in lockstep. Only a ``ModelError`` with ``retryable`` set is retried; anything else is raised at once. The
sleeps are anyio's, so a retry waiting out its backoff is cancelled by an interrupt like anything else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import anyio
import attrs
from tenacity import RetryCallState, Retrying, wait_random_exponential

from openma.errors import ModelError

_T = TypeVar("_T")

DEFAULT_ATTEMPTS: Final = 4


@attrs.frozen
class RetryPolicy:
    """How often and how patiently a retryable model error is retried."""

    #: Calls in all, the first included (1: never retry).
    attempts: int = DEFAULT_ATTEMPTS
    #: The first backoff's upper bound, in seconds (doubling on each retry).
    initial: float = 1.0
    #: The longest single backoff, in seconds.
    max_wait: float = 30.0


async def call_with_retries(
    policy: RetryPolicy,
    call: Callable[[int], Awaitable[_T]],
    *,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> _T:
    """``await call(attempt)`` (attempts count from 1), retried per ``policy`` while it raises a retryable
    ``ModelError``; the last error is raised when the attempts run out. ``on_retry(error, attempt, wait)``
    is told of each retry before its backoff.

    A call that succeeds at once costs nothing more than the call: the backoff (tenacity's
    ``wait_random_exponential``, asked with the failed attempt's number) is computed only after a failure.
    """
    attempts = max(1, policy.attempts)
    wait: wait_random_exponential | None = None
    state: RetryCallState | None = None
    attempt = 1
    while True:
        try:
            return await call(attempt)
        except ModelError as exc:
            if not exc.retryable or attempt >= attempts:
                raise
            if wait is None or state is None:
                wait = wait_random_exponential(multiplier=policy.initial, max=policy.max_wait)
                state = RetryCallState(Retrying(), None, (), {})
            state.attempt_number = attempt
            delay = float(wait(state))
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            await anyio.sleep(delay)
            attempt += 1
