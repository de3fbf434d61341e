"""A scripted Server-Sent-Events endpoint for the fake model providers.

Each request takes the next :class:`Reply` of the script: an HTTP error (status, JSON body, headers) or a
200 ``text/event-stream`` of SSE frames, optionally stalling (sending nothing more until the client goes away)
or dropping the connection (the response is never completed) after a number of frames. Every request is
recorded (``requests``: path, headers, JSON body) and so is every client disconnect seen during a stall.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tests.fakes._serve import ServedApp


@dataclass
class Reply:
    """One scripted answer: ``frames`` are ``(event name or None, data)``; data is JSON-encoded unless a str."""

    frames: list[tuple[str | None, Any]] = field(default_factory=list)
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: After this many frames, send nothing more until the client disconnects.
    stall_after: int | None = None
    #: After this many frames, abandon the response (the client sees the connection close mid-body).
    drop_after: int | None = None
    #: Seconds to wait before the response headers (a slow first byte).
    delay: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


class ScriptedSSE:
    """The ASGI app. ``check_auth(headers) -> str | None`` returns an error message to answer 401 with."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.paths = paths
        self.script: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.disconnects = threading.Semaphore(0)
        #: Accepted credentials, ``(header, value)``: a request carrying none of them is answered 401.
        self.expected_auth: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.script.clear()
            self.requests.clear()
            self.disconnects = threading.Semaphore(0)

    def add(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append(Recorded(scope["path"], headers, body))
            reply = self.script.popleft() if self.script else None
        if scope["path"] not in self.paths:
            await self._json(send, 404, {"error": {"type": "not_found_error", "message": scope["path"]}}, {})
            return
        if self.expected_auth and not any(headers.get(name) == value for name, value in self.expected_auth):
            error = {"type": "authentication_error", "message": "invalid API key", "code": "invalid_api_key"}
            await self._json(send, 401, {"type": "error", "error": error}, {})
            return
        if reply is None:
            await self._json(send, 500, {"error": {"type": "api_error", "message": "the script is empty"}}, {})
            return
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200:
            await self._json(send, reply.status, reply.body, reply.headers)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
                + [(k.encode(), v.encode()) for k, v in reply.headers.items()],
            }
        )
        for n, (event, data) in enumerate(reply.frames):
            if reply.drop_after is not None and n >= reply.drop_after:
                return  # never completed: uvicorn closes the connection mid-body
            if reply.stall_after is not None and n >= reply.stall_after:
                await self._stall(receive)
                return
            text = data if isinstance(data, str) else json.dumps(data)
            frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
            await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
        if reply.stall_after is not None and reply.stall_after >= len(reply.frames):
            await self._stall(receive)
            return
        if reply.drop_after is not None:
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stall(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects.release()
                return

    @staticmethod
    async def _json(send: Any, status: int, body: Any, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                + [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": data, "more_body": False})


def chunks(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` characters (one piece for an empty text)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def serve(app: ScriptedSSE) -> ServedApp:
    return ServedApp(app)
