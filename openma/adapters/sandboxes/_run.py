"""The one process runner of the local sandbox: ``exec`` and background processes alike.

A command is an anyio process (``anyio.open_process``, new session, both pipes read as they come and
capped) supervised by one coroutine, :meth:`Run.supervise`, which also samples the memory of the command's
processes together and kills them all past the limit. ``exec`` awaits the supervisor in the caller's task,
with a deadline, and stops whatever the command left holding its output. A background process's
supervisor runs as a task of the event loop that started it (:func:`spawn_detached`), with no deadline; it
reads until nothing holds the pipes any more. A background process therefore lives as long as that event
loop: when the loop ends, its processes are stopped.
"""

from __future__ import annotations

import codecs
import logging
import math
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal

import anyio
import sniffio
from anyio.abc import ByteReceiveStream, Process

from openma.adapters.sandboxes._config import SETTLE, WATCH_INTERVAL
from openma.adapters.sandboxes._proctree import RunMarker, group_rss, stop
from openma.core.workspace import mask_secrets

_log = logging.getLogger(__name__)
#: Seconds ``exec`` waits for its output to end once it stopped what its command left behind.
_DRAIN: Final = 1.0
#: Supervisors of background processes, kept referenced until they end (asyncio keeps only weak ones).
_DETACHED: set[Any] = set()


class Capture:
    """The first ``cap`` bytes of a stream; what comes after is counted and dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True

    def text(self, secrets: Sequence[str]) -> str:
        # A cut may split a UTF-8 sequence: an unfinished decode drops the broken tail instead of a U+FFFD.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(bytes(self.data), final=not self.truncated)
        return mask_secrets(text, secrets, cut=self.truncated)


async def spawn(argv: list[str], cwd: str, env: dict[str, str]) -> Process:
    """Start ``argv`` in a new session, stdin from ``/dev/null``, stdout and stderr piped (``OSError`` as is)."""
    return await anyio.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


class Run:
    """A started command: its process, its captured output, its memory watchdog and how it ended.

    ``memory`` is the limit on the resident bytes of the command's process group and session together
    (0: not watched); ``grace`` the seconds between SIGTERM and SIGKILL when it is stopped.
    """

    def __init__(
        self,
        proc: Process,
        command: str,
        marker: RunMarker,
        *,
        cap: int,
        memory: int,
        grace: float,
        rss: Callable[[int], int] = group_rss,
    ) -> None:
        self.proc = proc
        #: Resident bytes of the command's processes, given its leader's pid (another sandbox may count them
        #: its own way, say when they leave the leader's session).
        self.rss = rss
        self.command = command
        self.marker = marker
        self.out = Capture(cap)
        self.err = Capture(cap)
        self.memory = memory
        self.grace = grace
        self.timed_out = False
        self.oom = False
        self.killed = False
        #: Set when both pipes reached their end.
        self.pumped = anyio.Event()
        self._open = 2
        self._settled = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def _pump(self, stream: ByteReceiveStream | None, into: Capture) -> None:
        try:
            if stream is not None:
                async for chunk in stream:
                    into.feed(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._open -= 1
            if not self._open:
                self.pumped.set()

    async def _wait(self, timeout: float) -> Literal["exited", "timed_out", "oom"]:
        """Wait for the command's shell to exit: ``"exited"``, ``"timed_out"`` (still running at ``timeout``)
        or ``"oom"`` (the memory watchdog, sampling every ``WATCH_INTERVAL``, killed its group)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed_out"
            with anyio.move_on_after(min(remaining, WATCH_INTERVAL) if self.memory else remaining):
                await self.proc.wait()
                return "exited"
            if self.memory and await anyio.to_thread.run_sync(self.rss, self.proc.pid) > self.memory:
                self.oom = True
                await stop([self.proc.pid], self.marker, 0.0, first=signal.SIGKILL)
                await self.proc.wait()
                return "oom"

    async def supervise(self, *, timeout: float = math.inf, linger: float | None = None) -> None:
        """Read the output and watch the command until it has ended.

        At ``timeout`` the command's group (and its marked strays) is stopped. With ``linger`` (``exec``),
        once the shell exited, whatever still holds its output after ``linger`` seconds is stopped too;
        without (a background process), reading goes on as long as anything holds the pipes. Cancelled,
        it stops the command before it returns: nothing it supervised is left running.
        """
        proc = self.proc
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, proc.stdout, self.out)
                tg.start_soon(self._pump, proc.stderr, self.err)
                status = await self._wait(timeout)
                if status == "timed_out":
                    self.timed_out = True
                    await stop([proc.pid], self.marker, self.grace)
                if linger is not None and not self.pumped.is_set():
                    with anyio.move_on_after(linger):
                        await self.pumped.wait()
                    if not self.pumped.is_set():
                        # Processes it left behind still hold its output: they go with it.
                        await stop([proc.pid], self.marker, self.grace)
                        with anyio.move_on_after(_DRAIN):
                            await self.pumped.wait()
                        tg.cancel_scope.cancel()
        finally:
            # Both pipes at their end and the shell reaped: the backend has closed everything already.
            if proc.returncode is None or not self.pumped.is_set():
                with anyio.CancelScope(shield=True):
                    if proc.returncode is None:
                        await stop([proc.pid], self.marker, self.grace)
                    await proc.aclose()

    async def kill(self) -> None:
        """Stop the command's group and its marked strays (SIGTERM, SIGKILL after the grace); wait for it."""
        if self.proc.returncode is None:
            self.killed = True
        await stop([self.proc.pid], self.marker, self.grace)
        await self.proc.wait()

    async def settle(self) -> None:
        """Once the shell has exited, give the reader a moment (once) to collect what it printed last."""
        if not self._settled and self.proc.returncode is not None:
            self._settled = True
            with anyio.move_on_after(SETTLE):
                await self.pumped.wait()


def spawn_detached(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn`` as a task of the current event loop that belongs to no caller's task group.

    It is cancelled when the event loop ends (asyncio: with ``asyncio.run``'s remaining tasks; trio: as a
    system task); ``fn`` must handle its own errors.
    """

    async def guarded() -> None:
        try:
            await fn()
        except Exception:  # pragma: no cover - a supervisor catches what it expects
            _log.exception("local sandbox: a background process supervisor failed")

    if sniffio.current_async_library() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(guarded)
    else:
        import asyncio

        task = asyncio.get_running_loop().create_task(guarded())
        _DETACHED.add(task)
        task.add_done_callback(_DETACHED.discard)
