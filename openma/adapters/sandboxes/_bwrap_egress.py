"""The bubblewrap sandbox's only way out: the egress proxy, through a Unix socket.

A command's network namespace has nothing but ``lo``, so no address outside it is reachable. When the
sandbox's spec names an egress proxy (:class:`~openma.ports.egress.EgressEndpoint`):

* the **host side** (:class:`EgressRelay`) listens on a Unix socket in the sandbox's own directory
  (``<dir>/egress/proxy.sock``, owned by the sandbox's uid) and relays every connection to the proxy's TCP
  address;
* that directory is bound read-only at ``/run/openma`` inside, with the proxy's CA certificate
  (``ca.pem``) and the host's CA bundle with the proxy's CA appended (``ca-bundle.pem``);
* in front of each command, a small **forwarder** (:data:`FORWARDER`, run by the rootfs's ``python3``)
  listens on ``127.0.0.1:PORT`` inside the command's network namespace and relays to the socket; it
  detaches once it listens and ends with the command's shell;
* the command gets ``HTTPS_PROXY=http://openma:<credential>@127.0.0.1:PORT`` (and the rest of
  :meth:`EgressEndpoint.env`), with ``SSL_CERT_FILE`` and friends naming the bundle.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from typing import Final

import anyio
from anyio.abc import ByteStream, SocketListener, TaskGroup

from openma.ports.egress import EgressEndpoint

#: Where the egress directory appears inside, and the forwarder's port there.
INSIDE: Final = "/run/openma"
PORT: Final = 3128
CA_BUNDLE: Final = f"{INSIDE}/ca-bundle.pem"
_SYSTEM_BUNDLES: Final = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")

#: The in-sandbox forwarder: ``python3 -c FORWARDER <shell pid> <port> <socket>``. It listens, forks, and the
#: parent exits (so the shell goes on only once the port is open); the child relays each connection to the
#: Unix socket and exits when the shell that started it is gone.
FORWARDER: Final = r"""
import os, socket, sys, threading, time
shell, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(64)
if os.fork(): os._exit(0)
os.setsid()
for fd in (0, 1, 2):
    os.dup2(os.open(os.devnull, os.O_RDWR), fd)
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except OSError: pass
    finally:
        for s in (a, b):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
def serve(c):
    u = socket.socket(socket.AF_UNIX)
    try: u.connect(path)
    except OSError: c.close(); return
    threading.Thread(target=pump, args=(c, u), daemon=True).start()
    pump(u, c)
def watch():
    while True:
        try: os.kill(shell, 0)
        except ProcessLookupError: os._exit(0)
        except PermissionError: pass
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def prelude() -> str:
    """Shell lines run before a command when egress is on: start the forwarder, fail loudly if it cannot."""
    return (
        f"python3 -c {shlex.quote(FORWARDER)} $$ {PORT} {INSIDE}/proxy.sock "
        f"|| {{ echo 'openma: the egress forwarder did not start' >&2; exit 126; }}\n"
    )


def command_env(endpoint: EgressEndpoint) -> dict[str, str]:
    return endpoint.env(ca_file=CA_BUNDLE, host="127.0.0.1", port=PORT)


def write_files(directory: str, endpoint: EgressEndpoint, uid: int, gid: int) -> str:
    """Create ``<directory>/egress`` with the CA and the bundle; return its path."""
    egress = os.path.join(directory, "egress")
    os.makedirs(egress, mode=0o755, exist_ok=True)
    system = b""
    for bundle in _SYSTEM_BUNDLES:
        with contextlib.suppress(OSError), open(bundle, "rb") as f:
            system = f.read()
            break
    ca = endpoint.ca_pem.encode()
    for name, data in (("ca.pem", ca), ("ca-bundle.pem", system.rstrip(b"\n") + b"\n" + ca)):
        with open(os.path.join(egress, name), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(egress, name), 0o644)
    return egress


class EgressRelay:
    """The host side: a Unix socket whose connections are relayed to the proxy's TCP address."""

    def __init__(self, path: str, endpoint: EgressEndpoint, uid: int, gid: int) -> None:
        self.path = path
        self.endpoint = endpoint
        self.uid = uid
        self.gid = gid
        self._listener: SocketListener | None = None
        self._scope: anyio.CancelScope | None = None

    async def open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._listener = await anyio.create_unix_listener(self.path)
        os.chown(self.path, self.uid, self.gid)
        os.chmod(self.path, 0o600)

    async def serve(self) -> None:
        """Accept until :meth:`close` (run as a background task)."""
        assert self._listener is not None
        with anyio.CancelScope() as scope:
            self._scope = scope
            async with anyio.create_task_group() as tg:
                await self._listener.serve(lambda client: self._relay(client, tg), task_group=tg)

    async def _relay(self, client: ByteStream, tg: TaskGroup) -> None:
        del tg
        async with client:
            try:
                upstream = await anyio.connect_tcp(self.endpoint.host, self.endpoint.port)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as pumps:
                pumps.start_soon(_pump, client, upstream)
                pumps.start_soon(_pump, upstream, client)

    async def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        if self._listener is not None:
            with anyio.CancelScope(shield=True):
                await self._listener.aclose()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


async def _pump(source: ByteStream, sink: ByteStream) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await sink.send_eof()
