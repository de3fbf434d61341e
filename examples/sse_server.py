"""A small Starlette app that serves sessions' event logs as Server-Sent Events.

Run it (settings come from the environment, see docs/configuration.md)::

    pip install 'openma[dev]'       # starlette and uvicorn
    uvicorn --app-dir examples sse_server:app --port 8000

Routes (the tenant is taken from the path for the demo; a real host gets it from its auth):

* ``GET  /tenants/{tenant_id}/sessions/{session_id}/events``: the live tail as SSE; resumes after the
  ``Last-Event-ID`` header (or ``?after=<seq>``). ``?format=json`` returns one page instead
  (``?after=&limit=``).
* ``POST /tenants/{tenant_id}/sessions/{session_id}/events``: a JSON list of events to append (stand-in for
  the session's actor, so the demo can write).
* ``POST /tenants/{tenant_id}/sessions/{session_id}/inbox``: a JSON list of inputs to post.
* ``GET  /healthz``.

``SSE_HEARTBEAT`` (seconds, default 15) sets how often an idle stream sends a keepalive comment.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import openma
from openma import sse
from openma.sse import event_json


def _sessions(request: Request) -> Any:
    platform: openma.Platform = request.app.state.platform
    return platform.tenant(request.path_params["tenant_id"]).sessions


async def events(request: Request) -> Response:
    sessions = _sessions(request)
    session_id = request.path_params["session_id"]
    await sessions.get(session_id)  # 404 before the stream starts, not inside it
    if request.query_params.get("format") == "json":
        after = sse.parse_position(request.query_params.get("after"), "after") or 0
        page = await sessions.events(session_id, after=after, limit=int(request.query_params.get("limit", "100")))
        return Response("[" + ",".join(event_json(e) for e in page) + "]", media_type="application/json")
    body = sse.session_events(
        sessions,
        session_id,
        last_event_id=request.headers.get("last-event-id"),
        after=request.query_params.get("after"),
        heartbeat=request.app.state.heartbeat,
    )
    return StreamingResponse(body, headers=sse.HEADERS)


async def append(request: Request) -> Response:
    stored = await _sessions(request).append(request.path_params["session_id"], await request.json())
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


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
