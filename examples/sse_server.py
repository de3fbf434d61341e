"""A small Starlette app that serves sessions' event logs as Server-Sent Events.

Run it (settings come from the environment, see docs/configuration.md)::

    pip install 'openma[dev]'       # starlette and uvicorn
    python examples/sse_server.py --port 8000

Routes (the tenant is taken from the path for the demo; a real host gets it from its auth):

* ``GET  /tenants/{tenant_id}/sessions/{session_id}/events``: the live tail as SSE; resumes after the
  ``Last-Event-ID`` header (or ``?after=<seq>``). ``?format=json`` returns one page instead
  (``?after=&limit=``), each event in the same envelope as an SSE frame's ``data``.
* ``POST /tenants/{tenant_id}/sessions/{session_id}/events``: a JSON list of events to append (stand-in for
  the session's actor, so the demo can write).
* ``POST /tenants/{tenant_id}/sessions/{session_id}/inbox``: a JSON list of inputs to post.
* ``GET  /healthz``.

``SSE_HEARTBEAT`` (seconds, default 15) sets how often an idle stream sends a keepalive comment.

**Shutting down.** An SSE response never ends by itself, and uvicorn waits for open responses before it
shuts down, so each stream is given ``stop=app.state.stopping`` and :class:`GracefulServer` sets that event
as soon as uvicorn begins to shut down (Ctrl+C, SIGTERM): every stream ends cleanly, clients reconnect
elsewhere with ``Last-Event-ID``, and the server exits. Under the bare ``uvicorn`` command nothing sets the
event; pass ``--timeout-graceful-shutdown`` there, so open streams are at least cut after a while.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import openma
from openma import sse


def _sessions(request: Request) -> Any:
    platform: openma.Platform = request.app.state.platform
    return platform.tenant(request.path_params["tenant_id"]).sessions


async def events(request: Request) -> Response:
    sessions = _sessions(request)
    session_id = request.path_params["session_id"]
    if request.query_params.get("format") == "json":
        after = sse.parse_position(request.query_params.get("after"), "after") or 0
        page = await sessions.events(session_id, after=after, limit=int(request.query_params.get("limit", "100")))
        return Response("[" + ",".join(sse.event_json(e) for e in page) + "]", media_type="application/json")
    # Awaited before the response starts: a missing session or a bad position is a 404 / 400, not a 200
    # followed by a broken stream.
    body = await sse.session_events(
        sessions,
        session_id,
        last_event_id=request.headers.get("last-event-id"),
        after=request.query_params.get("after"),
        heartbeat=request.app.state.heartbeat,
        stop=request.app.state.stopping,
    )
    return StreamingResponse(body, headers=sse.HEADERS)


async def append(request: Request) -> Response:
    stored = await _sessions(request).unfenced_append(request.path_params["session_id"], await request.json())
    return JSONResponse([{"id": e.id, "seq": e.seq} for e in stored], status_code=201)


async def post(request: Request) -> Response:
    queued = await _sessions(request).post(request.path_params["session_id"], await request.json())
    return JSONResponse([{"event_id": q.event_id, "position": q.position} for q in queued], status_code=202)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def openma_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, openma.OpenmaError)
    return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.http_status)


def create_app(settings: openma.Settings | None = None, *, heartbeat: float | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.stopping = anyio.Event()  # set when the server begins to shut down: SSE streams end
        async with openma.Platform.open(settings or openma.Settings.from_env()) as platform:
            app.state.platform = platform
            yield

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/tenants/{tenant_id}/sessions/{session_id}/events", events, methods=["GET"]),
            Route("/tenants/{tenant_id}/sessions/{session_id}/events", append, methods=["POST"]),
            Route("/tenants/{tenant_id}/sessions/{session_id}/inbox", post, methods=["POST"]),
        ],
        exception_handlers={openma.OpenmaError: openma_error},
        lifespan=lifespan,
    )
    app.state.heartbeat = heartbeat if heartbeat is not None else float(os.environ.get("SSE_HEARTBEAT", "15"))
    return app


class GracefulServer(uvicorn.Server):
    """uvicorn's server that tells the app's SSE streams to end before it waits for open connections."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = getattr(self.app.state, "stopping", None)
        if stopping is not None:
            stopping.set()
        await super().shutdown(sockets)


app = create_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--fd", type=int, default=None, help="serve on this already bound socket instead")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    config = uvicorn.Config(app, host=args.host, port=args.port, fd=args.fd, log_level=args.log_level)
    GracefulServer(config, app).run()


if __name__ == "__main__":
    main()
