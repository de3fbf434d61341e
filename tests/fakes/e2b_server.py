"""A local E2B that the real ``e2b`` SDK talks to: the control plane (REST) and envd (Connect-RPC plus the
``/files`` REST routes) on one loopback port.

envd's RPC services are implemented against the **server stubs shipped inside the e2b wheel**
(``e2b.envd.process.process_connect`` / ``filesystem_connect``), served by connectrpc's ASGI applications,
so the wire format is the SDK's own. Commands run for real, as local subprocesses, in each sandbox's own
directory, and the fake behaves like envd where it matters to openma:

* ``Start`` streams ``start``/``data``/``end`` events; envd's deadline (``Connect-Timeout-Ms``) SIGKILLs the
  started process only (not its children), then ends the stream with ``DEADLINE_EXCEEDED``; a client that
  disconnects does not kill the process; a process killed by a signal reports exit code -1 (Go's
  ``ExitCode()``).
* The environment is envd's: ``PATH``, ``HOME``, ``USER``, ``LOGNAME``, the sandbox's env vars, then the
  command's.
* A killed or expired sandbox answers envd calls with the proxy's 502 "sandbox ... was not found", and every
  process it ever started (found by an environment marker) is killed, as if its VM went away.

Point the SDK at it with ``api_key=FakeE2B.API_KEY, api_url=url, sandbox_url=url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process import process_pb
from e2b.envd.process.process_connect import ProcessASGIApplication
from protobuf import Oneof
from protobuf.wkt import Timestamp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ENVD_VERSION = "0.6.4"
MARKER_VAR = "OPENMA_FAKE_SANDBOX"
ProcessEvent = process_pb.ProcessEvent


def kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment carries ``MARKER_VAR=marker`` (the sandbox's "VM")."""
    needle = f"{MARKER_VAR}={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


class FakeProcess:
    """One started process and the subscribers of its events."""

    def __init__(self, proc: asyncio.subprocess.Process, config: process_pb.ProcessConfig) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.config = config
        self.queues: list[asyncio.Queue[tuple[str, Any]]] = []
        self.end: ProcessEvent.EndEvent | None = None
        self.deadline_hit = False
        self.finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> asyncio.Queue[tuple[str, Any]]:
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        if self.end is not None:
            q.put_nowait(("end", self.end))
        else:
            self.queues.append(q)
        return q

    def begin(self, timeout_ms: float | None) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(timeout_ms))

    def _broadcast(self, item: tuple[str, Any]) -> None:
        for q in self.queues:
            q.put_nowait(item)

    async def _pump(self, stream: asyncio.StreamReader | None, kind: str) -> None:
        if stream is None:
            return
        while chunk := await stream.read(32 << 10):
            self._broadcast(("data", (kind, chunk)))

    def kill(self) -> bool:
        if self.end is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        return True

    async def _run(self, timeout_ms: float | None) -> None:
        timer = None
        if timeout_ms is not None and timeout_ms > 0:

            def expire() -> None:
                self.deadline_hit = True
                self.kill()

            timer = asyncio.get_running_loop().call_later(timeout_ms / 1000, expire)
        pumps = asyncio.gather(self._pump(self.proc.stdout, "stdout"), self._pump(self.proc.stderr, "stderr"))
        rc = await self.proc.wait()
        # Like envd: the process's exit closes the pipes, whoever else still holds them.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pumps), 1.0)
        pumps.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumps
        if timer is not None:
            timer.cancel()
        status = f"exit status {rc}" if rc >= 0 else f"signal: {signal.Signals(-rc).name.lower()}"
        self.end = ProcessEvent.EndEvent(
            exit_code=rc if rc >= 0 else -1,
            exited=rc >= 0,
            status=status,
            error=None if rc == 0 else status,
        )
        self._broadcast(("end", self.end))
        self.queues.clear()
        self.finished.set()


@dataclass
class FakeSandbox:
    id: str
    template: str
    metadata: dict[str, str]
    env: dict[str, str]
    started_at: datetime
    end_at: datetime
    root: Path
    alive: bool = True
    processes: dict[int, FakeProcess] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    def resolve(self, path: str) -> Path:
        return Path(path) if path.startswith("/") else self.home / path


def _entry(path: Path) -> filesystem_pb.EntryInfo:
    st = path.lstat()
    is_link = stat.S_ISLNK(st.st_mode)
    target_st = path.stat() if is_link and path.exists() else st
    kind = filesystem_pb.FileType.DIRECTORY if stat.S_ISDIR(target_st.st_mode) else filesystem_pb.FileType.FILE
    return filesystem_pb.EntryInfo(
        name=path.name,
        type=kind,
        path=str(path),
        size=st.st_size,
        mode=st.st_mode & 0o7777,
        permissions=stat.filemode(st.st_mode),
        owner="user",
        group="user",
        modified_time=Timestamp.from_datetime(datetime.fromtimestamp(st.st_mtime, UTC)),
        symlink_target=os.readlink(path) if is_link else None,
        is_symlink=is_link,
    )


class FakeE2B:
    """The fake's state and its ASGI app (``fake.app``)."""

    API_KEY = "e2b_fake_key"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sandboxes: dict[str, FakeSandbox] = {}
        #: ``(method, path)`` of every request, for tests that count round trips.
        self.calls: list[tuple[str, str]] = []
        #: The JSON body of every create request, for tests that check what the adapter asked for.
        self.created: list[dict[str, Any]] = []
        #: ``(method, path prefix) -> [(status, message), ...]``: answers to give instead of serving.
        self.faults: dict[tuple[str, str], list[tuple[int, str]]] = {}
        rest = Starlette(
            routes=[
                Route("/v2/sandboxes", self._create, methods=["POST"]),
                Route("/v2/sandboxes", self._list, methods=["GET"]),
                Route("/v2/sandboxes/{sid}/connect", self._connect, methods=["POST"]),
                Route("/sandboxes/{sid}", self._info, methods=["GET"]),
                Route("/sandboxes/{sid}", self._kill, methods=["DELETE"]),
                Route("/sandboxes/{sid}/timeout", self._timeout, methods=["POST"]),
                Route("/files", self._files_get, methods=["GET"]),
                Route("/files", self._files_post, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )
        self._rest = rest
        self._process_app = ProcessASGIApplication(_ProcessService(self))
        self._fs_app = FilesystemASGIApplication(_FilesystemService(self))

    # -- ASGI entry ------------------------------------------------------------------------------------------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self._rest(scope, receive, send)
        path: str = scope["path"]
        method: str = scope["method"]
        self.calls.append((method, path))
        for (m, prefix), answers in self.faults.items():
            if answers and m == method and path.startswith(prefix):
                status, message = answers.pop(0)
                return await JSONResponse({"code": status, "message": message}, status_code=status)(
                    scope, receive, send
                )
        envd = path.startswith(("/process.Process/", "/filesystem.Filesystem/", "/files", "/health"))
        if envd:
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            sid = headers.get("e2b-sandbox-id", "")
            sbx = self.sandboxes.get(sid)
            if sbx is None or not self._check_alive(sbx):
                body = {"code": 502, "message": f"The sandbox {sid} was not found", "sandboxId": sid}
                return await JSONResponse(body, status_code=502)(scope, receive, send)
        if path.startswith("/process.Process/"):
            return await self._process_app(scope, receive, send)
        if path.startswith("/filesystem.Filesystem/"):
            return await self._fs_app(scope, receive, send)
        return await self._rest(scope, receive, send)

    def fail(self, method: str, path_prefix: str, status: int, message: str = "injected", times: int = 1) -> None:
        self.faults.setdefault((method, path_prefix), []).extend([(status, message)] * times)

    # -- sandbox lifecycle ----------------------------------------------------------------------------------

    def _check_alive(self, sbx: FakeSandbox) -> bool:
        if sbx.alive and datetime.now(UTC) >= sbx.end_at:
            self._destroy(sbx)
        return sbx.alive

    def _destroy(self, sbx: FakeSandbox) -> None:
        sbx.alive = False
        kill_marked(sbx.id)
        for proc in sbx.processes.values():
            proc.kill()
        shutil.rmtree(sbx.root, ignore_errors=True)

    def sandbox_for(self, ctx: RequestContext[Any, Any]) -> FakeSandbox:
        sid = ctx.request_headers.get("e2b-sandbox-id", "")
        sbx = self.sandboxes.get(sid)
        if sbx is None or not sbx.alive:
            raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sid} was not found")
        return sbx

    def close(self) -> None:
        for sbx in self.sandboxes.values():
            if sbx.alive:
                self._destroy(sbx)

    def _auth(self, request: Request) -> Response | None:
        if request.headers.get("x-api-key") != self.API_KEY:
            return JSONResponse({"code": 401, "message": "Invalid API key"}, status_code=401)
        return None

    def _live(self, sid: str) -> FakeSandbox | None:
        sbx = self.sandboxes.get(sid)
        if sbx is None or not self._check_alive(sbx):
            return None
        return sbx

    @staticmethod
    def _iso(dt: datetime) -> str:
        return dt.isoformat().replace("+00:00", "Z")

    def _sandbox_json(self, sbx: FakeSandbox) -> dict[str, Any]:
        return {"templateID": sbx.template, "sandboxID": sbx.id, "clientID": "fake", "envdVersion": ENVD_VERSION}

    def _detail_json(self, sbx: FakeSandbox) -> dict[str, Any]:
        return {
            **self._sandbox_json(sbx),
            "startedAt": self._iso(sbx.started_at),
            "endAt": self._iso(sbx.end_at),
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 1024,
            "state": "running",
            "metadata": sbx.metadata,
        }

    async def _create(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        body = await request.json()
        self.created.append(body)
        sid = "sbx" + secrets.token_hex(8)
        now = datetime.now(UTC)
        root = self.root / sid
        (root / "home").mkdir(parents=True)
        sbx = FakeSandbox(
            id=sid,
            template=body.get("templateID") or "base",
            metadata=dict(body.get("metadata") or {}),
            env=dict(body.get("envVars") or {}),
            started_at=now,
            end_at=now + timedelta(seconds=int(body.get("timeout") or 300)),
            root=root,
        )
        self.sandboxes[sid] = sbx
        return JSONResponse(self._sandbox_json(sbx), status_code=201)

    async def _list(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        wanted: dict[str, str] = {}
        if raw := request.query_params.get("metadata"):
            wanted = {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in urllib.parse.parse_qsl(raw)}
        live = [s for s in self.sandboxes.values() if self._check_alive(s)]
        hits = [s for s in live if all(s.metadata.get(k) == v for k, v in wanted.items())]
        hits.sort(key=lambda s: (s.started_at, s.id))
        start = int(request.query_params.get("nextToken") or 0)
        limit = int(request.query_params.get("limit") or 100)
        page = hits[start : start + limit]
        headers = {"x-next-token": str(start + limit)} if start + limit < len(hits) else {}
        return JSONResponse([self._detail_json(s) for s in page], headers=headers)

    async def _connect(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        sbx = self._live(request.path_params["sid"])
        if sbx is None:
            return JSONResponse({"code": 404, "message": "sandbox not found"}, status_code=404)
        body = await request.json() if await request.body() else {}
        if timeout := body.get("timeout"):
            sbx.end_at = max(sbx.end_at, datetime.now(UTC) + timedelta(seconds=int(timeout)))
        return JSONResponse(self._sandbox_json(sbx), status_code=200)

    async def _info(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        sbx = self._live(request.path_params["sid"])
        if sbx is None:
            return JSONResponse({"code": 404, "message": "sandbox not found"}, status_code=404)
        return JSONResponse(self._detail_json(sbx))

    async def _kill(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        sbx = self._live(request.path_params["sid"])
        if sbx is None:
            return JSONResponse({"code": 404, "message": "sandbox not found"}, status_code=404)
        self._destroy(sbx)
        return Response(status_code=204)

    async def _timeout(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        sbx = self._live(request.path_params["sid"])
        if sbx is None:
            return JSONResponse({"code": 404, "message": "sandbox not found"}, status_code=404)
        body = await request.json()
        sbx.end_at = datetime.now(UTC) + timedelta(seconds=int(body["timeout"]))
        return Response(status_code=204)

    # -- envd REST ------------------------------------------------------------------------------------------

    def _sbx(self, request: Request) -> FakeSandbox:
        return self.sandboxes[request.headers["e2b-sandbox-id"]]

    async def _health(self, request: Request) -> Response:
        return Response(status_code=204)

    async def _files_get(self, request: Request) -> Response:
        path = self._sbx(request).resolve(request.query_params["path"])
        if not path.exists():
            return JSONResponse({"code": 404, "message": f"path '{path}' does not exist"}, status_code=404)
        if path.is_dir():
            return JSONResponse({"code": 400, "message": f"path '{path}' is a directory"}, status_code=400)
        return Response(path.read_bytes(), media_type="application/octet-stream")

    async def _files_post(self, request: Request) -> Response:
        sbx = self._sbx(request)
        written: list[tuple[Path, bytes]] = []
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            written.append((sbx.resolve(request.query_params["path"]), await request.body()))
        else:
            form = await request.form()
            for _, value in form.multi_items():
                if isinstance(value, str):
                    continue
                name = request.query_params.get("path") or value.filename or ""
                written.append((sbx.resolve(name), await value.read()))
        out = []
        for path, data in written:
            if path.is_dir():
                return JSONResponse({"code": 400, "message": f"path '{path}' is a directory"}, status_code=400)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            out.append({"name": path.name, "type": "file", "path": str(path)})
        return JSONResponse(out)


class _ProcessService:
    """envd's ``process.Process`` service on the stubs from the e2b wheel."""

    def __init__(self, fake: FakeE2B) -> None:
        self.fake = fake

    async def _spawn(self, sbx: FakeSandbox, config: process_pb.ProcessConfig | None) -> FakeProcess:
        if config is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "process config is required")
        cwd = sbx.resolve(config.cwd) if config.has_field("cwd") and config.cwd else sbx.home
        if not cwd.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd}' does not exist")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(sbx.home),
            "USER": "user",
            "LOGNAME": "user",
            **sbx.env,
            **dict(config.envs),
            MARKER_VAR: sbx.id,
        }
        proc = await asyncio.create_subprocess_exec(
            config.cmd,
            *config.args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        fp = FakeProcess(proc, config)
        sbx.processes[fp.pid] = fp
        return fp

    @staticmethod
    def _event(event: Oneof[Any, Any]) -> process_pb.StartResponse:
        return process_pb.StartResponse(event=ProcessEvent(event=event))

    async def _stream(self, proc: FakeProcess, q: asyncio.Queue[tuple[str, Any]], response: Any) -> AsyncIterator[Any]:
        try:
            yield response(event=ProcessEvent(event=Oneof("start", ProcessEvent.StartEvent(pid=proc.pid))))
            while True:
                kind, value = await q.get()
                if kind == "data":
                    data = ProcessEvent.DataEvent(output=Oneof(value[0], value[1]))
                    yield response(event=ProcessEvent(event=Oneof("data", data)))
                elif kind == "end":
                    if proc.deadline_hit:
                        raise ConnectError(Code.DEADLINE_EXCEEDED, "the command reached its deadline")
                    yield response(event=ProcessEvent(event=Oneof("end", value)))
                    return
        finally:
            with contextlib.suppress(ValueError):
                proc.queues.remove(q)

    async def start(self, request: process_pb.StartRequest, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        sbx = self.fake.sandbox_for(ctx)
        proc = await self._spawn(sbx, request.process)
        q = proc.subscribe()
        proc.begin(ctx.timeout_ms)
        async for item in self._stream(proc, q, process_pb.StartResponse):
            yield item

    async def connect(self, request: process_pb.ConnectRequest, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        sbx = self.fake.sandbox_for(ctx)
        proc = sbx.processes.get(self._pid(request.process))
        if proc is None or proc.end is not None:
            raise ConnectError(Code.NOT_FOUND, "process not found")
        async for item in self._stream(proc, proc.subscribe(), process_pb.ConnectResponse):
            yield item

    @staticmethod
    def _pid(selector: process_pb.ProcessSelector | None) -> int:
        if selector is None or selector.selector is None or selector.selector.field != "pid":
            raise ConnectError(Code.INVALID_ARGUMENT, "only pid selectors are supported")
        return int(selector.selector.value)

    async def list(self, request: process_pb.ListRequest, ctx: RequestContext[Any, Any]) -> process_pb.ListResponse:
        sbx = self.fake.sandbox_for(ctx)
        running = [p for p in sbx.processes.values() if p.end is None]
        return process_pb.ListResponse(processes=[process_pb.ProcessInfo(config=p.config, pid=p.pid) for p in running])

    async def send_signal(
        self, request: process_pb.SendSignalRequest, ctx: RequestContext[Any, Any]
    ) -> process_pb.SendSignalResponse:
        sbx = self.fake.sandbox_for(ctx)
        proc = sbx.processes.get(self._pid(request.process))
        if proc is None or proc.end is not None:
            raise ConnectError(Code.NOT_FOUND, "process not found")
        sig = signal.SIGKILL if request.signal == process_pb.Signal.SIGKILL else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            proc.proc.send_signal(sig)
        return process_pb.SendSignalResponse()

    async def update(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, "not implemented by the fake")

    async def stream_input(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, "not implemented by the fake")

    async def send_input(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, "not implemented by the fake")

    async def close_stdin(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, "not implemented by the fake")


class _FilesystemService:
    """envd's ``filesystem.Filesystem`` service (stat, list, mkdir, remove, move)."""

    def __init__(self, fake: FakeE2B) -> None:
        self.fake = fake

    def _path(self, ctx: RequestContext[Any, Any], path: str) -> Path:
        return self.fake.sandbox_for(ctx).resolve(path)

    async def stat(self, request: filesystem_pb.StatRequest, ctx: RequestContext[Any, Any]) -> Any:
        path = self._path(ctx, request.path)
        if not path.exists() and not path.is_symlink():
            raise ConnectError(Code.NOT_FOUND, f"path '{path}' does not exist")
        return filesystem_pb.StatResponse(entry=_entry(path))

    async def list_dir(self, request: filesystem_pb.ListDirRequest, ctx: RequestContext[Any, Any]) -> Any:
        base = self._path(ctx, request.path)
        if not base.exists():
            raise ConnectError(Code.NOT_FOUND, f"path '{base}' does not exist")
        if not base.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"path '{base}' is not a directory")
        depth = request.depth or 1
        entries = []
        for dirpath, dirnames, filenames in os.walk(base):
            level = len(Path(dirpath).relative_to(base).parts)
            for name in sorted(dirnames) + sorted(filenames):
                entries.append(_entry(Path(dirpath) / name))
            if level + 1 >= depth:
                dirnames[:] = []
        return filesystem_pb.ListDirResponse(entries=entries)

    async def make_dir(self, request: filesystem_pb.MakeDirRequest, ctx: RequestContext[Any, Any]) -> Any:
        path = self._path(ctx, request.path)
        if path.exists():
            raise ConnectError(Code.ALREADY_EXISTS, f"path '{path}' already exists")
        path.mkdir(parents=True)
        return filesystem_pb.MakeDirResponse(entry=_entry(path))

    async def remove(self, request: filesystem_pb.RemoveRequest, ctx: RequestContext[Any, Any]) -> Any:
        path = self._path(ctx, request.path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        return filesystem_pb.RemoveResponse()

    async def move(self, request: filesystem_pb.MoveRequest, ctx: RequestContext[Any, Any]) -> Any:
        src, dst = self._path(ctx, request.source), self._path(ctx, request.destination)
        if not src.exists():
            raise ConnectError(Code.NOT_FOUND, f"path '{src}' does not exist")
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
        return filesystem_pb.MoveResponse(entry=_entry(dst))

    async def watch_dir(self, request: Any, ctx: Any) -> AsyncIterator[Any]:
        raise ConnectError(Code.UNIMPLEMENTED, "not implemented by the fake")
        yield  # pragma: no cover

    async def create_watcher(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, "not implemented by the fake")

    async def get_watcher_events(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, "not implemented by the fake")

    async def remove_watcher(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, "not implemented by the fake")


def serve(root: Path) -> tuple[FakeE2B, Any]:
    """Start a fake on a free loopback port: ``(fake, served)``; ``served.url`` is its base URL."""
    from tests.fakes._serve import ServedApp

    fake = FakeE2B(root)
    return fake, ServedApp(fake.app).start()


if __name__ == "__main__":  # pragma: no cover - manual use: python -m tests.fakes.e2b_server
    import tempfile

    fake, served = serve(Path(tempfile.mkdtemp()))
    print(json.dumps({"url": served.url, "api_key": FakeE2B.API_KEY}))
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
