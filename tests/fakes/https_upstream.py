"""A real HTTPS server on loopback with its own CA, standing in for the internet behind the egress proxy.

Its CA is not the proxy's: tests hand ``ca_file`` to the proxy as ``upstream_ca``. A certificate for the name
the client asks for (SNI) is minted on demand, so any test host name resolved to 127.0.0.1 works.

Routes: ``GET /echo`` (JSON: method, path, headers); ``GET /bytes/N`` (N bytes, Content-Length);
``GET /chunked/N`` (N bytes, chunked); ``GET /short/N`` (announces N bytes, sends half, closes); ``GET /slow/N``
(N bytes, Content-Length, sent in blocks 10 ms apart, so a transfer lasts however fast the path); ``POST /upload``
(JSON: how many body bytes arrived, either framing). Every request's headers and client port are recorded in
``requests``.
"""

from __future__ import annotations

import json
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from openma.adapters.egress.ca import EgressCA

BLOCK = b"x" * 65536


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _record(self) -> None:
        self.server.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "port": self.client_address[1]}
        )

    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._record()
        if self.path == "/echo":
            self._json({"method": "GET", "path": self.path, "headers": dict(self.headers)})
            return
        kind, _, size = self.path.strip("/").partition("/")
        if kind not in ("bytes", "chunked", "short", "slow") or not size.isdigit():
            self.send_error(404)
            return
        remaining = int(size)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if kind != "chunked":
            self.send_header("Content-Length", str(remaining))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if kind == "short":
            self.close_connection = True
            remaining //= 2
        try:
            while remaining:
                block = BLOCK[: min(remaining, len(BLOCK))]
                remaining -= len(block)
                if kind == "slow":
                    time.sleep(0.01)
                if kind != "chunked":
                    self.wfile.write(block)
                else:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            if kind == "chunked":
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def do_POST(self) -> None:
        self._record()
        received = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                received += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            length = int(self.headers.get("Content-Length", "0"))
            while received < length:
                chunk = self.rfile.read(min(65536, length - received))
                if not chunk:
                    break
                received += len(chunk)
        self._json({"received": received, "headers": dict(self.headers)})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict[str, Any]]


class HttpsUpstream:
    """``with HttpsUpstream() as up:`` serves HTTPS on ``127.0.0.1:up.port``; ``up.ca_file`` is its CA."""

    def __init__(self, *, plain: bool = False) -> None:
        self.ca = EgressCA.generate("test upstream CA")
        self._dir = tempfile.TemporaryDirectory(prefix="openma-upstream-")
        self.ca_file = str(Path(self._dir.name) / "upstream-ca.pem")
        Path(self.ca_file).write_text(self.ca.cert_pem, encoding="ascii")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.requests = []
        if not plain:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self._pair("127.0.0.1"))
            context.sni_callback = self._sni
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _pair(self, host: str) -> tuple[str, str]:
        cert, key = self.ca.leaf(host)
        path = Path(self._dir.name) / f"{host}.pem"
        path.write_text(key + cert, encoding="ascii")
        return str(path), str(path)

    def _sni(self, sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        sock.context = self.ca.server_context(name or "127.0.0.1")

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests

    def __enter__(self) -> HttpsUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._dir.cleanup()
