"""A worker process for the multi-process worker tests (run with ``python -m tests.worker_proc ARGS``).

It registers a ``scripted`` model provider, then runs ``python -m openma worker ARGS`` in this process,
settings from the environment, so the tests exercise the real command line: its signal handling, drain and
exit. The model is set by the environment:

* by default every call answers ``done`` after ``WORKER_MODEL_DELAY`` seconds (default 0.05);
* ``WORKER_MODEL_TOOL=<command>``: a call whose conversation ends with the user's message first asks for
  the ``bash`` tool with that command (say ``sleep 0.2``), and answers ``done`` once it has the result;
* ``WORKER_STALL_FILE=<path>``: the first call of any process that creates ``path`` streams a part of its
  answer and then stalls for an hour (a turn to kill mid-stream); every other call answers as above.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import anyio

from openma import registry
from openma.cli import main
from openma.ports.model import ModelEvent, ModelRequest, TextDelta
from openma.testing import ScriptedModel

PARTIAL = "a partial answer, cut short "


class EndlessScripted:
    """Answers every request (a scripted model that never runs out; see the module docstring)."""

    name = "scripted"

    def __init__(self, delay: float, tool_command: str | None = None, stall_file: str | None = None) -> None:
        self.delay = delay
        self.tool_command = tool_command
        self.stall_file = stall_file

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        if self.stall_file is not None and self._first_stall():
            return self._stall()
        last = request.messages[-1]["content"] if request.messages else []
        asks_tool = self.tool_command is not None and not any(b.get("type") == "tool_result" for b in last)
        if asks_tool:
            use = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": self.tool_command}}
            return ScriptedModel([[use]], delay=self.delay).stream(request)
        return ScriptedModel([[{"type": "text", "text": "done"}]], delay=self.delay).stream(request)

    def _first_stall(self) -> bool:
        assert self.stall_file is not None
        try:
            os.close(os.open(self.stall_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    async def _stall(self) -> AsyncIterator[ModelEvent]:
        yield TextDelta(PARTIAL)
        await anyio.sleep(3600)

    async def aclose(self) -> None:
        pass


def open_scripted(settings: Any, *, model: str = "") -> EndlessScripted:
    return EndlessScripted(
        float(os.environ.get("WORKER_MODEL_DELAY", "0.05")),
        tool_command=os.environ.get("WORKER_MODEL_TOOL") or None,
        stall_file=os.environ.get("WORKER_STALL_FILE") or None,
    )


if __name__ == "__main__":
    registry.models.register("scripted", open_scripted, replace=True)
    main()
