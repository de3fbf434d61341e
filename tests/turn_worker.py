"""A process that runs one turn, for the turn tests that cross processes (run with ``python -m``).

Modes (settings from the environment, plus ``WORKER_TENANT`` and ``WORKER_SESSION``):

* ``answer TEXT``: run the session's turn with a scripted model that answers TEXT; print the stop reason,
  then the JSON of the last message the model was shown.
* ``sleep``: run a turn whose model asks for ``bash`` with a 30 s sleep (writing its pid to ``sleep.pid``);
  the test kills this process while the tool runs.
"""

from __future__ import annotations

import json
import os
import sys

import anyio

from openma import Platform, Settings
from openma.testing import ScriptedModel


async def main(mode: str, arg: str) -> None:
    async with Platform.open(Settings.from_env()) as oma:
        sessions = oma.tenant(os.environ["WORKER_TENANT"]).sessions
        session_id = os.environ["WORKER_SESSION"]
        if mode == "answer":
            model = ScriptedModel([[{"type": "text", "text": arg}]])
            result = await sessions.run(session_id, model=model, wait=10)
            print(result.stop_reason)
            print(json.dumps(model.requests[0].messages[-1]))
        elif mode == "sleep":
            command = "sleep 30 & echo $! > sleep.pid; wait"
            use = {"type": "tool_use", "id": "toolu_sleep", "name": "bash", "input": {"command": command}}
            await sessions.run(session_id, model=ScriptedModel([[use]]), wait=10)
        sys.stdout.flush()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
