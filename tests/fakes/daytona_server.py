"""A local Daytona that the real ``daytona`` SDK talks to: the control plane (REST/JSON) and the toolbox
(the in-sandbox daemon's REST API, reached at ``{toolboxProxyUrl}/{sandboxId}/...``) on one loopback port.

Commands run for real, as local subprocesses, in each sandbox's own directory, and the fake behaves like the
daemon where it matters to openma:

* ``POST /process/execute`` runs the command with ``/bin/sh -c``, returns stdout and stderr **merged** in
  ``result``, and at its ``timeout`` kills the command's process tree and answers **408**
  ``PROCESS_EXECUTION_TIMEOUT`` with no output.
* Uploads are multipart (``files[i].path`` / ``files[i].file``) and create parent directories; downloads are
  a ``multipart/form-data`` answer with one ``file`` part per path or an ``error`` part carrying the
  daemon's JSON error (``FILE_NOT_FOUND``).
* Errors use Daytona's envelope (``message``, ``code``, ``source``), so the SDK raises its own classes.
* A deleted sandbox answers 404 on the control plane and on the toolbox, and every process it started
  (found by an environment marker) is killed.

Point the SDK at it with ``DaytonaConfig(api_key=FakeDaytona.API_KEY, api_url=url + "/api")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tests.fakes.e2b_server import kill_marked

MARKER_VAR = "OPENMA_FAKE_SANDBOX"
DAEMON = "DAYTONA_DAEMON"
API = "DAYTONA_API"


def _error(status: int, message: str, code: str | None = None, source: str = DAEMON) -> JSONResponse:
    body: dict[str, Any] = {"statusCode": status, "message": message, "source": source}
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FakeSandbox:
    id: str
    name: str
    labels: dict[str, str]
    env: dict[str, str]
    created_at: datetime
    root: Path
    snapshot: str | None
    auto_stop_interval: int = 15
    auto_delete_interval: int = -1
    state: str = "started"
    last_activity: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def home(self) -> Path:
        return self.root / "home"

    def resolve(self, path: str) -> Path:
        return Path(path) if path.startswith("/") else self.home / path


class FakeDaytona:
    """The fake's state and its ASGI app (``fake.app``)."""

    API_KEY = "dtn_fake_key"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base_url = ""  # set by serve(): the toolbox proxy URL is derived from it
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.calls: list[tuple[str, str]] = []
        #: The JSON body of every create request, in order.
        self.created: list[dict[str, Any]] = []
        self.faults: dict[tuple[str, str], list[tuple[int, str]]] = {}
        api = Starlette(
            routes=[
                Route("/sandbox", self._create, methods=["POST"]),
                Route("/sandbox", self._list, methods=["GET"]),
                Route("/sandbox/{sid}", self._get, methods=["GET"]),
                Route("/sandbox/{sid}", self._delete, methods=["DELETE"]),
                Route("/sandbox/{sid}/autostop/{minutes:int}", self._autostop, methods=["POST"]),
                Route("/sandbox/{sid}/last-activity", self._activity, methods=["POST"]),
                Route("/sandbox/{sid}/start", self._start, methods=["POST"]),
                Route("/sandbox/{sid}/stop", self._stop, methods=["POST"]),
            ]
        )
        toolbox = Starlette(
            routes=[
                Route("/{sid}/process/execute", self._execute, methods=["POST"]),
                Route("/{sid}/files/bulk-upload", self._upload, methods=["POST"]),
                Route("/{sid}/files/bulk-download", self._download, methods=["POST"]),
                Route("/{sid}/files", self._list_files, methods=["GET"]),
                Route("/{sid}/files", self._delete_file, methods=["DELETE"]),
                Route("/{sid}/files/info", self._file_info, methods=["GET"]),
                Route("/{sid}/files/folder", self._folder, methods=["POST"]),
            ]
        )
        self._app = Starlette(routes=[Mount("/api", app=api), Mount("/toolbox", app=toolbox)])

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            self.calls.append((method, path))
            for (m, prefix), answers in self.faults.items():
                if answers and m == method and path.startswith(prefix):
                    status, message = answers.pop(0)
                    return await _error(status, message, source=API)(scope, receive, send)
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            if path.startswith("/api/") and headers.get("authorization") != f"Bearer {self.API_KEY}":
                return await _error(401, "Invalid credentials", source=API)(scope, receive, send)
        return await self._app(scope, receive, send)

    def fail(self, method: str, path_prefix: str, status: int, message: str = "injected", times: int = 1) -> None:
        self.faults.setdefault((method, path_prefix), []).extend([(status, message)] * times)

    def close(self) -> None:
        for sbx in list(self.sandboxes.values()):
            self._destroy(sbx)

    def _destroy(self, sbx: FakeSandbox) -> None:
        sbx.state = "destroyed"
        self.sandboxes.pop(sbx.id, None)
        kill_marked(sbx.id)
        shutil.rmtree(sbx.root, ignore_errors=True)

    # -- control plane --------------------------------------------------------------------------------------

    def _dto(self, sbx: FakeSandbox) -> dict[str, Any]:
        return {
            "id": sbx.id,
            "organizationId": "org-fake",
            "name": sbx.name,
            "snapshot": sbx.snapshot,
            "user": "daytona",
            "env": sbx.env,
            "labels": sbx.labels,
            "public": False,
            "networkBlockAll": False,
            "kvm": False,
            "target": "local",
            "cpu": 1,
            "gpu": 0,
            "memory": 1,
            "disk": 3,
            "state": sbx.state,
            "autoStopInterval": sbx.auto_stop_interval,
            "autoDeleteInterval": sbx.auto_delete_interval,
            "createdAt": _iso(sbx.created_at),
            "updatedAt": _iso(sbx.last_activity),
            "lastActivityAt": _iso(sbx.last_activity),
            "toolboxProxyUrl": f"{self.base_url}/toolbox",
        }

    def _find(self, sid: str) -> FakeSandbox | None:
        sbx = self.sandboxes.get(sid)
        if sbx is None:
            sbx = next((s for s in self.sandboxes.values() if s.name == sid), None)
        return sbx

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        self.created.append(body)
        sid = str(uuid.uuid4())
        root = self.root / sid
        (root / "home").mkdir(parents=True)
        sbx = FakeSandbox(
            id=sid,
            name=body.get("name") or sid,
            labels=dict(body.get("labels") or {}),
            env=dict(body.get("env") or {}),
            created_at=datetime.now(UTC),
            root=root,
            snapshot=body.get("snapshot"),
        )
        if body.get("autoStopInterval") is not None:
            sbx.auto_stop_interval = int(body["autoStopInterval"])
        if body.get("autoDeleteInterval") is not None:
            sbx.auto_delete_interval = int(body["autoDeleteInterval"])
        self.sandboxes[sid] = sbx
        return JSONResponse(self._dto(sbx))

    async def _list(self, request: Request) -> Response:
        wanted = json.loads(request.query_params.get("labels") or "{}")
        hits = [s for s in self.sandboxes.values() if all(s.labels.get(k) == v for k, v in wanted.items())]
        hits.sort(key=lambda s: (s.created_at, s.id))
        start = int(request.query_params.get("cursor") or 0)
        limit = int(request.query_params.get("limit") or 100)
        page = hits[start : start + limit]
        nxt = str(start + limit) if start + limit < len(hits) else None
        return JSONResponse({"items": [self._dto(s) for s in page], "nextCursor": nxt})

    def _missing(self, sid: str) -> JSONResponse:
        return _error(404, f"Sandbox with ID or name {sid} not found", source=API)

    async def _get(self, request: Request) -> Response:
        sbx = self._find(request.path_params["sid"])
        return JSONResponse(self._dto(sbx)) if sbx else self._missing(request.path_params["sid"])

    async def _delete(self, request: Request) -> Response:
        sbx = self._find(request.path_params["sid"])
        if sbx is None:
            return self._missing(request.path_params["sid"])
        self._destroy(sbx)
        return JSONResponse(self._dto(sbx))

    async def _autostop(self, request: Request) -> Response:
        sbx = self._find(request.path_params["sid"])
        if sbx is None:
            return self._missing(request.path_params["sid"])
        sbx.auto_stop_interval = request.path_params["minutes"]
        return JSONResponse(self._dto(sbx))

    async def _activity(self, request: Request) -> Response:
        sbx = self._find(request.path_params["sid"])
        if sbx is None:
            return self._missing(request.path_params["sid"])
        sbx.last_activity = datetime.now(UTC)
        return Response(status_code=201)

    async def _start(self, request: Request) -> Response:
        sbx = self._find(request.path_params["sid"])
        if sbx is None:
            return self._missing(request.path_params["sid"])
        sbx.state = "started"
        return JSONResponse(self._dto(sbx))

    async def _stop(self, request: Request) -> Response:
        sbx = self._find(request.path_params["sid"])
        if sbx is None:
            return self._missing(request.path_params["sid"])
        kill_marked(sbx.id)
        sbx.state = "stopped"
        return JSONResponse(self._dto(sbx))

    # -- toolbox --------------------------------------------------------------------------------------------

    def _sbx(self, request: Request) -> FakeSandbox | None:
        sbx = self.sandboxes.get(request.path_params["sid"])
        return sbx if sbx is not None and sbx.state == "started" else None

    async def _execute(self, request: Request) -> Response:
        sbx = self._sbx(request)
        if sbx is None:
            return _error(404, "sandbox not found", source="DAYTONA_PROXY")
        body = await request.json()
        cwd = sbx.resolve(body["cwd"]) if body.get("cwd") else sbx.home
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(sbx.home),
            "USER": "daytona",
            **sbx.env,
            **(body.get("envs") or {}),
            MARKER_VAR: sbx.id,
        }
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            body["command"],
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        timeout = body.get("timeout") or 10 * 60
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return _error(408, "command execution timeout", code="PROCESS_EXECUTION_TIMEOUT")
        sbx.last_activity = datetime.now(UTC)
        rc = proc.returncode if proc.returncode is not None and proc.returncode >= 0 else -1
        return JSONResponse({"exitCode": rc, "result": out.decode("utf-8", "replace")})

    async def _upload(self, request: Request) -> Response:
        sbx = self._sbx(request)
        if sbx is None:
            return _error(404, "sandbox not found", source="DAYTONA_PROXY")
        form = await request.form()
        dests: dict[str, str] = {}
        files: list[dict[str, Any]] = []
        for name, value in form.multi_items():
            idx = name.removeprefix("files[").split("]")[0]
            if name.endswith(".path") and isinstance(value, str):
                dests[idx] = value.strip()
        for name, value in form.multi_items():
            idx = name.removeprefix("files[").split("]")[0]
            if name.endswith(".file") and not isinstance(value, str):
                dest = sbx.resolve(dests[idx])
                if dest.is_dir():
                    return JSONResponse({"errors": [f"{dest}: is a directory"]}, status_code=400)
                dest.parent.mkdir(parents=True, exist_ok=True)
                data = await value.read()
                dest.write_bytes(data)
                files.append({"path": str(dest), "bytes": len(data)})
        return JSONResponse({"files": files})

    async def _download(self, request: Request) -> Response:
        sbx = self._sbx(request)
        if sbx is None:
            return _error(404, "sandbox not found", source="DAYTONA_PROXY")
        body = await request.json()
        boundary = "DAYTONA-FILE-BOUNDARY"
        parts: list[bytes] = []
        for raw in body.get("paths") or []:
            path = sbx.resolve(raw)
            if path.is_file():
                head = (
                    f'Content-Disposition: form-data; name="file"; filename="{raw}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                parts.append(head + path.read_bytes())
            else:
                err = {
                    "message": f"file not found: {raw}",
                    "statusCode": 404,
                    "code": "FILE_NOT_FOUND",
                    "source": DAEMON,
                }
                head = (
                    f'Content-Disposition: form-data; name="error"; filename="{raw}"\r\n'
                    "Content-Type: application/json\r\n\r\n"
                ).encode()
                parts.append(head + json.dumps(err).encode())
        sep = f"--{boundary}\r\n".encode()
        payload = b"".join(sep + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
        return Response(payload, media_type=f"multipart/form-data; boundary={boundary}")

    @staticmethod
    def _info(path: Path) -> dict[str, Any]:
        st = path.lstat()
        mtime = datetime.fromtimestamp(st.st_mtime, UTC)
        return {
            "name": path.name,
            "isDir": stat.S_ISDIR(st.st_mode),
            "size": st.st_size,
            "mode": stat.filemode(st.st_mode),
            "modTime": str(mtime),
            "modifiedAt": _iso(mtime),
            "permissions": oct(st.st_mode & 0o777),
            "owner": "daytona",
            "group": "daytona",
            "path": str(path),
        }

    async def _list_files(self, request: Request) -> Response:
        sbx = self._sbx(request)
        if sbx is None:
            return _error(404, "sandbox not found", source="DAYTONA_PROXY")
        path = sbx.resolve(request.query_params.get("path") or ".")
        if not path.exists():
            return _error(404, f"path not found: {path}", code="FILE_NOT_FOUND")
        if not path.is_dir():
            return _error(400, f"not a directory: {path}", code="INVALID_FILE_PATH")
        return JSONResponse([self._info(p) for p in sorted(path.iterdir())])

    async def _file_info(self, request: Request) -> Response:
        sbx = self._sbx(request)
        if sbx is None:
            return _error(404, "sandbox not found", source="DAYTONA_PROXY")
        path = sbx.resolve(request.query_params["path"])
        if not path.exists() and not path.is_symlink():
            return _error(404, f"path not found: {path}", code="FILE_NOT_FOUND")
        return JSONResponse(self._info(path))

    async def _delete_file(self, request: Request) -> Response:
        sbx = self._sbx(request)
        if sbx is None:
            return _error(404, "sandbox not found", source="DAYTONA_PROXY")
        path = sbx.resolve(request.query_params["path"])
        if not path.exists() and not path.is_symlink():
            return _error(404, f"path not found: {path}", code="FILE_NOT_FOUND")
        if path.is_dir() and not path.is_symlink():
            if request.query_params.get("recursive") != "true":
                return _error(400, f"{path} is a directory; set recursive", code="INVALID_FILE_PATH")
            shutil.rmtree(path)
        else:
            path.unlink()
        return Response(status_code=204)

    async def _folder(self, request: Request) -> Response:
        sbx = self._sbx(request)
        if sbx is None:
            return _error(404, "sandbox not found", source="DAYTONA_PROXY")
        path = sbx.resolve(request.query_params["path"])
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(int(request.query_params.get("mode") or "755", 8))
        return Response(status_code=201)


def serve(root: Path) -> tuple[FakeDaytona, Any]:
    """Start a fake on a free loopback port: ``(fake, served)``; the API URL is ``served.url + "/api"``."""
    from tests.fakes._serve import ServedApp

    fake = FakeDaytona(root)
    served = ServedApp(fake.app)
    fake.base_url = served.url
    served.start()
    return fake, served
