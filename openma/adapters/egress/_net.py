"""Sockets of the egress proxy: accept, connect and TLS on non-blocking sockets, read into the caller's buffer.

The proxy's cost per byte is copies, not parsing: an ``anyio`` ``TLSStream`` decrypts through memory BIOs,
which copies every byte about six times between the socket and the next send. Here TLS runs on the socket
itself (``ssl.SSLSocket``, non-blocking, waiting with ``anyio.wait_readable``/``wait_writable``, so any anyio
backend works): OpenSSL reads the socket and decrypts into the caller's buffer (:meth:`SocketStream.receive_into`)
and encrypts straight onto the socket, so a relayed byte is copied once in user space.

:class:`SocketStream` is an ``anyio`` byte stream: EOF is ``EndOfStream`` from :meth:`~SocketStream.receive`
(``0`` from :meth:`~SocketStream.receive_into`), a failed socket or TLS session ``BrokenResourceError``. A TLS
peer that closes without ``close_notify`` reads as EOF (the HTTP framing above notices a short body).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute

#: Most bytes one receive returns: the bytes held at once per direction, besides OpenSSL's record buffers.
CHUNK: Final = 262144


def _is_eof(error: ssl.SSLError) -> bool:
    return isinstance(error, ssl.SSLEOFError) or "UNEXPECTED_EOF" in str(error)


class SocketStream(anyio.abc.ByteStream):
    """A connected non-blocking socket, plain or TLS, as an anyio byte stream. Not for concurrent use of one
    direction by two tasks (the proxy reads and writes each stream from one task at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._buffer: bytearray | None = None
        self._eof = False
        self._closed = False

    @property
    def socket(self) -> socket.socket:
        """The underlying socket (an ``ssl.SSLSocket`` once :meth:`start_tls` succeeded)."""
        return self._sock

    async def start_tls(
        self, context: ssl.SSLContext, *, server_side: bool, hostname: str | None = None
    ) -> SocketStream:
        """This connection with TLS on it, after the handshake; this stream must not be used afterwards.

        ``ssl.SSLError`` (``SSLCertVerificationError`` included) when the handshake fails; the socket is
        closed then."""
        raw = self._sock
        self._closed = True
        try:
            tls = context.wrap_socket(
                raw, server_side=server_side, server_hostname=hostname, do_handshake_on_connect=False
            )
        except BaseException:
            raw.close()
            raise
        stream = SocketStream(tls)
        try:
            while True:
                try:
                    tls.do_handshake()
                    return stream
                except ssl.SSLWantReadError:
                    await anyio.wait_readable(tls)
                except ssl.SSLWantWriteError:
                    await anyio.wait_writable(tls)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise

    async def receive_into(self, view: memoryview) -> int:
        """Read into ``view``: what is there, at least one byte (waiting for it), at most ``len(view)``;
        ``0`` at EOF. On TLS, every record already readable is decrypted into ``view`` in one call."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._eof or not len(view):
            return 0
        filled = 0
        size = len(view)
        sock = self._sock
        while True:
            try:
                count = sock.recv_into(view[filled:]) if filled else sock.recv_into(view)
            except (ssl.SSLWantReadError, BlockingIOError):
                if filled:
                    return filled
                await self._wait(readable=True)
                continue
            except ssl.SSLWantWriteError:
                await self._wait(readable=False)
                continue
            except ssl.SSLError as error:
                if not _is_eof(error):
                    raise anyio.BrokenResourceError from error
                count = 0
            except OSError as error:
                raise anyio.BrokenResourceError from error
            if not count:
                self._eof = True
                return filled
            filled += count
            if not self._tls or filled == size:
                return filled

    async def receive(self, max_bytes: int = CHUNK) -> bytes:
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = bytearray(CHUNK)
        with memoryview(buffer) as view:
            count = await self.receive_into(view[: min(max_bytes, CHUNK)])
            if not count:
                raise anyio.EndOfStream
            return bytes(view[:count])

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        with memoryview(item) as whole:
            view = whole
            sock = self._sock
            while view:
                try:
                    view = view[sock.send(view) :]
                except (ssl.SSLWantWriteError, BlockingIOError):
                    await self._wait(readable=False)
                except ssl.SSLWantReadError:
                    await self._wait(readable=True)
                except OSError as error:  # ssl.SSLError included
                    raise anyio.BrokenResourceError from error

    async def send_eof(self) -> None:
        if self._tls:
            raise NotImplementedError("half-closing a TLS connection is not supported")
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            raise anyio.BrokenResourceError from error

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._sock.fileno() >= 0:
                anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()

    async def _wait(self, *, readable: bool) -> None:
        try:
            await (anyio.wait_readable if readable else anyio.wait_writable)(self._sock)
        except anyio.ClosedResourceError:
            raise
        except OSError as error:
            raise anyio.BrokenResourceError from error
        if self._closed:
            raise anyio.ClosedResourceError

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        return {
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: sock.getsockname(),
            SocketAttribute.remote_address: lambda: sock.getpeername(),
        }


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not TCP, or already reset: the next read or write reports it
        pass


async def connect(address: str, port: int) -> SocketStream:
    """A TCP connection to the IP ``address`` (never a name: the proxy connects to the address it checked)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect((address, port))
        except BlockingIOError:
            await anyio.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code)) from None
        _nodelay(sock)
    except BaseException:
        sock.close()
        raise
    return SocketStream(sock)


async def serve(
    listener: anyio.abc.Listener[Any], handler: Callable[[SocketStream], Any], group: anyio.abc.TaskGroup
) -> None:
    """Accept on every socket of ``listener`` (made by ``anyio.create_tcp_listener``, which binds them) and
    start ``handler(stream)`` in ``group`` for each connection, until cancelled."""
    listeners = getattr(listener, "listeners", [listener])
    async with anyio.create_task_group() as accepting:
        for one in listeners:
            accepting.start_soon(_accept, one.extra(SocketAttribute.raw_socket), handler, group)


async def _accept(listening: socket.socket, handler: Callable[[SocketStream], Any], group: anyio.abc.TaskGroup) -> None:
    while True:
        await anyio.wait_readable(listening)
        try:
            sock, _ = listening.accept()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                await anyio.sleep(0.1)  # out of descriptors: let connections finish before accepting more
                continue
            if error.errno in (errno.ECONNABORTED, errno.EPROTO):
                continue
            raise
        _nodelay(sock)
        group.start_soon(handler, SocketStream(sock))


__all__ = ["CHUNK", "SocketStream", "connect", "serve"]
