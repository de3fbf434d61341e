"""The egress proxy: an HTTP/1.1 forward proxy with ``CONNECT`` and TLS interception, failing closed.

For every request the proxy

1. reads ``Proxy-Authorization: Basic base64(openma:<credential>)`` and asks the resolver for the session's
   :class:`~openma.ports.egress.EgressGrant` (missing or unknown: 407; a lookup error: 502);
2. resolves the host itself (``anyio.getaddrinfo``, or the ``resolve`` hook) and applies
   :func:`openma.core.egress_policy.decide` (refused: 403 with the reason);
3. connects to the checked address only (so DNS rebinding cannot redirect it), with TLS verified against the
   system store plus ``upstream_ca``, the request host as SNI and hostname;
4. removes ``Authorization``, ``Proxy-Authorization`` and hop-by-hop headers, adds the resolver's
   ``inject`` headers, and streams both bodies (h11 framing, at most 256 KiB at a time);
5. emits one ``egress.request`` telemetry event: ``session_id``, ``tenant_id``, ``host``, ``port``,
   ``method``, ``allowed`` (the request was relayed upstream), ``reason`` (``"allowed"`` or why not),
   ``injected`` (header names only, never a value), ``status``, ``bytes_up``, ``bytes_down``,
   ``duration_ms``. A refused ``CONNECT`` is one event with method ``CONNECT``.

``CONNECT host:port`` is decided once for the tunnel; the proxy then terminates the sandbox's TLS with a leaf
minted by :class:`~openma.adapters.egress.ca.EgressCA` and relays the HTTP/1.1 requests inside (keep-alive,
several per tunnel, each audited), over one upstream connection kept for the tunnel's life. A request inside
a tunnel whose ``Host`` names another host is refused. Absolute-form ``http://`` requests are relayed over
a fresh upstream connection each.

With ``passthrough=True`` (``OPENMA_EGRESS_PASSTHROUGH``), a ``CONNECT`` whose session has ``unrestricted``
networking and for whose host the resolver injects nothing is not intercepted: after the same checks (the
credential, the policy, every resolved address) the proxy connects to the checked address and copies the bytes
both ways. Any public host is allowed there anyway and nothing is added, so interception would only read the
traffic; the sandbox then sees the upstream's own certificate (it must trust public CAs) and its own
``Authorization`` headers reach the host. Such a tunnel is audited as one ``CONNECT`` event with
``allowed=True`` and the bytes of the whole tunnel. Under ``limited`` networking every ``CONNECT`` is
intercepted, so the ``Host`` of each request is held to the allowed authority.

Bodies: a response with ``Content-Length`` is copied from the upstream socket to the client without h11
parsing (``_http``); TLS runs on the sockets themselves (``_net``), so a relayed byte is copied once in user
space. The proxy's CPU per byte is then mostly OpenSSL decrypting and re-encrypting.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11

from openma.adapters.egress._http import (
    STREAM_ERRORS,
    Exchange,
    Refused,
    UpstreamBroken,
    next_event,
    refuse,
    relay,
    request_headers,
    send,
)
from openma.adapters.egress._net import SocketStream, connect, serve
from openma.adapters.egress._tunnel import splice
from openma.adapters.egress.ca import EgressCA
from openma.core.egress_policy import decide, precheck, split_authority
from openma.errors import InvalidInput
from openma.ports.egress import EgressGrant, EgressResolver
from openma.ports.telemetry import NullTelemetry, Telemetry

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]
PROXY_USER: Final = "openma"
_ESTABLISHED: Final = h11.Response(status_code=200, headers=[], reason=b"Connection established")


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), in resolver order, without duplicates."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def proxy_credential(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The credential of a ``Proxy-Authorization: Basic`` header with user ``openma``; ``None`` otherwise."""
    for name, value in headers:
        if name != b"proxy-authorization":
            continue
        scheme, _, encoded = value.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password if sep and user == PROXY_USER and password else None
    return None


class EgressProxy:
    """The egress proxy. ``async with EgressProxy(...) as proxy:`` runs it in its own task group on
    ``proxy.host:proxy.port``; ``await proxy.serve(task_status=...)`` runs it in a caller's task group."""

    def __init__(
        self,
        resolver: EgressResolver,
        ca: EgressCA,
        *,
        telemetry: Telemetry | None = None,
        upstream_ca: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        resolve: Resolve | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        passthrough: bool = False,
    ) -> None:
        self._resolver = resolver
        self._ca = ca
        self._telemetry: Telemetry = telemetry or NullTelemetry()
        self.host = host
        self.port = port
        self._resolve: Resolve = resolve or system_resolve
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._passthrough = passthrough
        self._upstream_context = ssl.create_default_context()
        self._upstream_context.set_alpn_protocols(["http/1.1"])
        if upstream_ca is not None:
            try:
                self._upstream_context.load_verify_locations(cafile=upstream_ca)
            except (OSError, ssl.SSLError):
                raise InvalidInput("the upstream CA file cannot be read as PEM", field="upstream_ca") from None
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> EgressProxy:
        stack = AsyncExitStack()
        group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(group.cancel_scope.cancel)
        await group.start(self.serve)
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and drop every open connection (clients see the connection close)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; reports the bound port through ``task_status``."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        async with listener, anyio.create_task_group() as connections:
            task_status.started(self.port)
            await serve(listener, self._handle, connections)

    @property
    def passthrough(self) -> bool:
        """Whether an ``unrestricted`` ``CONNECT`` with nothing to inject is tunnelled without interception."""
        return self._passthrough

    def __repr__(self) -> str:
        return f"EgressProxy(host={self.host!r}, port={self.port})"

    # -- one client connection ---------------------------------------------------------------------------

    async def _handle(self, stream: SocketStream) -> None:
        try:
            await self._serve_client(stream)
        except STREAM_ERRORS:
            pass
        except Exception as error:  # one broken connection never stops the proxy
            self._telemetry.emit("silent_catch", where="egress.proxy", error=type(error).__name__)
        finally:
            await anyio.aclose_forcefully(stream)

    async def _serve_client(self, stream: SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            try:
                with anyio.fail_after(self._idle_timeout):
                    event = await next_event(conn, stream)
            except TimeoutError:
                return
            except h11.RemoteProtocolError:
                self._audit(None, "", 0, "", Exchange(status=400), "malformed request", (), time.monotonic())
                await refuse(conn, stream, 400, "malformed request")
                return
            if not isinstance(event, h11.Request):
                return
            if event.method == b"CONNECT":
                await self._connect(conn, stream, event)
                return
            if not await self._forward(conn, stream, event):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _authorize(self, request: h11.Request) -> EgressGrant:
        credential = proxy_credential(request.headers)
        if credential is None:
            raise Refused(407, "proxy authentication required")
        try:
            grant = await self._resolver.grant(credential)
        except Exception:
            raise Refused(502, "the egress lookup failed") from None
        if grant is None:
            raise Refused(407, "unknown proxy credential")
        return grant

    async def _decide(self, grant: EgressGrant, host: str, port: int) -> str:
        admitted = precheck(grant, host, port)  # a host off the list is not even looked up
        if not admitted.allowed:
            raise Refused(403, f"egress refused: {admitted.reason}")
        try:
            addresses: Sequence[str] = () if _is_ip(host) else await self._resolve(host, port)
        except Exception:
            raise Refused(502, f"could not resolve {host}") from None
        decision = decide(grant, host, port, addresses)
        if not decision.allowed or decision.address is None:
            raise Refused(403, f"egress refused: {decision.reason}")
        return decision.address

    async def _inject(self, grant: EgressGrant, host: str, port: int) -> Mapping[str, str]:
        try:
            headers = dict(await self._resolver.inject(grant, host, port))
        except Exception:
            raise Refused(502, "the egress credential lookup failed") from None
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str) or not h11_safe(name, value):
                raise Refused(502, "the egress credential lookup returned a malformed header")
        return headers

    async def _open(self, host: str, address: str, port: int, *, tls: bool) -> SocketStream:
        try:
            with anyio.fail_after(self._connect_timeout):
                sock = await connect(address, port)
                if not tls:
                    return sock
                return await sock.start_tls(self._upstream_context, server_side=False, hostname=host)
        except TimeoutError:
            raise Refused(504, f"connecting to {host}:{port} timed out") from None
        except ssl.SSLCertVerificationError:
            raise Refused(502, f"the certificate of {host} is not trusted") from None
        except (*STREAM_ERRORS, ssl.SSLError):
            raise Refused(502, f"could not connect to {host}:{port}") from None

    # -- CONNECT: a TLS tunnel, intercepted --------------------------------------------------------------

    async def _connect(self, conn: h11.Connection, stream: SocketStream, request: h11.Request) -> None:
        started = time.monotonic()
        grant: EgressGrant | None = None
        upstream: SocketStream | None = None
        host, port = "", 0
        try:
            try:
                host, port = split_authority(request.target.decode("latin-1"))
            except InvalidInput:
                raise Refused(400, "CONNECT needs host:port") from None
            grant = await self._authorize(request)
            address = await self._decide(grant, host, port)
            if self._passthrough and grant.networking == "unrestricted" and not await self._inject(grant, host, port):
                upstream = await self._open(host, address, port, tls=False)
        except Refused as refused:
            self._audit(grant, host, port, "CONNECT", Exchange(status=refused.status), refused.reason, (), started)
            await refuse(conn, stream, refused.status, refused.reason)
            return
        if upstream is not None:
            exchange = Exchange(status=200)
            try:
                await send(conn, stream, _ESTABLISHED)
                if early := conn.trailing_data[0]:  # what the client sent right after CONNECT
                    await upstream.send(early)
                    exchange.bytes_up += len(early)
                await splice(stream, upstream, exchange, self._idle_timeout)
            except STREAM_ERRORS:
                pass
            finally:
                await anyio.aclose_forcefully(upstream)
            self._audit(grant, host, port, "CONNECT", exchange, "allowed", (), started)
            return
        await send(conn, stream, _ESTABLISHED)
        if conn.trailing_data[0]:
            return  # the client spoke before the tunnel was up: not something a TLS client does
        try:
            with anyio.fail_after(self._connect_timeout):
                context = await anyio.to_thread.run_sync(self._ca.server_context, host)
                client = await stream.start_tls(context, server_side=True)
        except (TimeoutError, ssl.SSLError, *STREAM_ERRORS):
            return
        try:
            await self._tunnel(client, grant, host, port, address)
        finally:
            await anyio.aclose_forcefully(client)

    async def _tunnel(self, client: SocketStream, grant: EgressGrant, host: str, port: int, address: str) -> None:
        conn = h11.Connection(h11.SERVER)
        upstream: SocketStream | None = None
        upstream_conn: h11.Connection | None = h11.Connection(h11.CLIENT)
        try:
            while True:
                try:
                    with anyio.fail_after(self._idle_timeout):
                        event = await next_event(conn, client)
                except TimeoutError:
                    return
                except h11.RemoteProtocolError:
                    await refuse(conn, client, 400, "malformed request")
                    return
                if not isinstance(event, h11.Request):
                    return
                started = time.monotonic()
                exchange = Exchange()
                injected: Sequence[str] = ()
                try:
                    authority = _header(event.headers, b"host") or _authority(host, port).encode("latin-1")
                    try:
                        same = split_authority(authority.decode("latin-1"), port)[0] == host
                    except InvalidInput:
                        same = False
                    if not same:
                        raise Refused(403, "egress refused: the Host header does not match the tunnel")
                    inject = await self._inject(grant, host, port)
                    injected = sorted(inject)
                    if upstream is None or upstream_conn is None:
                        if upstream is not None:  # the previous response left it unusable
                            await anyio.aclose_forcefully(upstream)
                            upstream = None
                        upstream = await self._open(host, address, port, tls=True)
                        upstream_conn = h11.Connection(h11.CLIENT)
                    forwarded = h11.Request(
                        method=event.method,
                        target=event.target,
                        headers=request_headers(event.headers, inject, authority),
                    )
                    upstream_conn = await relay(conn, client, upstream_conn, upstream, forwarded, exchange)
                except Refused as refused:
                    exchange.status = refused.status
                    self._audit(grant, host, port, _text(event.method), exchange, refused.reason, injected, started)
                    await refuse(conn, client, refused.status, refused.reason)
                    return
                except UpstreamBroken as broken:
                    self._audit(grant, host, port, _text(event.method), exchange, str(broken), injected, started)
                    return
                self._audit(grant, host, port, _text(event.method), exchange, "allowed", injected, started)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        finally:
            if upstream is not None:
                await anyio.aclose_forcefully(upstream)

    # -- absolute-form http:// ---------------------------------------------------------------------------

    async def _forward(self, conn: h11.Connection, stream: SocketStream, request: h11.Request) -> bool:
        """Relay one ``http://`` request; whether the client connection may carry another."""
        started = time.monotonic()
        grant: EgressGrant | None = None
        exchange = Exchange()
        host, port = "", 0
        injected: tuple[str, ...] = ()
        upstream: SocketStream | None = None
        try:
            target = request.target.decode("latin-1")
            try:
                parts = urlsplit(target)
                if parts.scheme.lower() != "http" or parts.username is not None or not parts.netloc:
                    raise InvalidInput("absolute http:// URL expected")
                host, port = split_authority(parts.netloc, 80)
            except (InvalidInput, ValueError):
                raise Refused(400, "the proxy takes absolute http:// URLs or CONNECT host:port") from None
            grant = await self._authorize(request)
            address = await self._decide(grant, host, port)
            inject = await self._inject(grant, host, port)
            injected = tuple(sorted(inject))
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            upstream = await self._open(host, address, port, tls=False)
            forwarded = h11.Request(
                method=request.method,
                target=path.encode("latin-1"),
                headers=request_headers(request.headers, inject, parts.netloc.encode("latin-1")),
            )
            await relay(conn, stream, h11.Connection(h11.CLIENT), upstream, forwarded, exchange)
        except Refused as refused:
            exchange.status = refused.status
            self._audit(grant, host, port, _text(request.method), exchange, refused.reason, injected, started)
            await refuse(conn, stream, refused.status, refused.reason)
            return False
        except UpstreamBroken as broken:
            self._audit(grant, host, port, _text(request.method), exchange, str(broken), injected, started)
            return False
        finally:
            if upstream is not None:
                await anyio.aclose_forcefully(upstream)
        self._audit(grant, host, port, _text(request.method), exchange, "allowed", injected, started)
        return True

    def _audit(
        self,
        grant: EgressGrant | None,
        host: str,
        port: int,
        method: str,
        exchange: Exchange,
        reason: str,
        injected: Sequence[str],
        started: float,
    ) -> None:
        fields: dict[str, Any] = {
            "session_id": grant.session_id if grant else None,
            "tenant_id": grant.tenant_id if grant else None,
            "host": host,
            "port": port,
            "method": method,
            "allowed": reason == "allowed",
            "reason": reason,
            "injected": list(injected),
            "status": exchange.status,
            "bytes_up": exchange.bytes_up,
            "bytes_down": exchange.bytes_down,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
        }
        self._telemetry.emit("egress.request", **fields)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def _text(value: bytes) -> str:
    return value.decode("latin-1")[:32]


def h11_safe(name: str, value: str) -> bool:
    """Whether an injected header is a valid token name and a value without line breaks."""
    return (
        bool(name)
        and all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name)
        and "\r" not in value
        and "\n" not in value
        and value.isascii()
    )


__all__ = ["EgressProxy", "Resolve", "proxy_credential", "system_resolve"]
