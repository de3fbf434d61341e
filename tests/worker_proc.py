"""A worker process for the multi-process worker tests (run with ``python -m tests.worker_proc ARGS``).

It registers a ``scripted`` model provider whose every call answers ``done`` after ``WORKER_MODEL_DELAY``
seconds (default 0.05), then runs ``python -m openma worker ARGS`` in this process, settings from the
environment, so the tests exercise the real command line: its signal handling, drain and exit.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from openma import registry
from openma.cli import main
from openma.ports.model import ModelEvent, ModelRequest
from openma.testing import ScriptedModel


class EndlessScripted:
    """Answers every request with ``done`` after a delay (a scripted model that never runs out)."""

    name = "scripted"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        return ScriptedModel([[{"type": "text", "text": "done"}]], delay=self.delay).stream(request)

    async def aclose(self) -> None:
        pass


def open_scripted(settings: Any, *, model: str = "") -> EndlessScripted:
    return EndlessScripted(float(os.environ.get("WORKER_MODEL_DELAY", "0.05")))


if __name__ == "__main__":
    registry.models.register("scripted", open_scripted, replace=True)
    main()
