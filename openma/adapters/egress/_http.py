"""HTTP/1.1 plumbing of the egress proxy over h11 and anyio streams: read events, relay one exchange.

Nothing here parses HTTP by hand: h11 frames requests and responses (Content-Length, chunked, HEAD, 1xx) and
these helpers move its events between a client-side ``h11.SERVER`` connection and an upstream
``h11.CLIENT`` connection, one body chunk at a time, so memory stays bounded whatever the body size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, cast

import anyio
import anyio.abc
import attrs
import h11

from openma.adapters.egress._net import CHUNK, SocketStream

#: Dropped from a forwarded request: hop-by-hop headers, the proxy's credential and the sandbox's own
#: credentials (the proxy injects the vault's). ``Expect`` is answered by the proxy itself.
REQUEST_DROP: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authorization", b"proxy-authenticate", b"proxy-connection",
        b"te", b"trailer", b"upgrade", b"authorization", b"expect",
    }
)  # fmt: skip
RESPONSE_DROP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
STREAM_ERRORS: Final = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,
)


class Refused(Exception):
    """A request the proxy answers itself with ``status`` and a short ``reason`` (never a secret)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class UpstreamBroken(Exception):
    """The upstream connection failed after the response started: the client connection is dropped."""


@attrs.define
class Exchange:
    """What one relayed request/response did, for telemetry."""

    status: int | None = None
    bytes_up: int = 0
    bytes_down: int = 0


async def next_event(conn: h11.Connection, stream: anyio.abc.ByteStream) -> object:
    """The next h11 event of ``conn``, reading ``stream`` as needed (a closed stream reads as EOF)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await receive(stream)
        except STREAM_ERRORS:
            data = b""
        conn.receive_data(data)


async def receive(stream: anyio.abc.ByteStream) -> bytes:
    """Up to ``CHUNK`` bytes of ``stream`` (a :class:`SocketStream` gives every TLS record already readable)."""
    return await stream.receive(CHUNK)


async def send(conn: h11.Connection, stream: anyio.abc.ByteStream, event: h11.Event) -> None:
    """Send one h11 event (h11 frames it) on ``stream``."""
    data = conn.send(event)
    if data:
        await stream.send(data)


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The header names listed in ``Connection`` (hop-by-hop by declaration)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return tokens


def request_headers(
    headers: Iterable[tuple[bytes, bytes]], inject: Mapping[str, str], host: bytes
) -> list[tuple[bytes, bytes]]:
    """The forwarded request headers: hop-by-hop, proxy and ``Authorization`` removed, ``Host`` set,
    ``inject`` added (replacing any header of the same name)."""
    headers = list(headers)
    drop = REQUEST_DROP | connection_tokens(headers) | {b"host"}
    injected = {name.lower().encode("latin-1"): value.encode("latin-1") for name, value in inject.items()}
    out = [(b"host", host)]
    out.extend((name, value) for name, value in headers if name not in drop and name not in injected)
    out.extend(injected.items())
    return out


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The relayed response headers: hop-by-hop removed, framing kept (h11 re-frames)."""
    headers = list(headers)
    drop = RESPONSE_DROP | connection_tokens(headers)
    return [(name, value) for name, value in headers if name not in drop]


async def refuse(conn: h11.Connection, stream: anyio.abc.ByteStream, status: int, reason: str) -> None:
    """Answer with ``status`` and ``reason`` as text, and ``Connection: close`` (best effort)."""
    body = (reason + "\n").encode("utf-8", "replace")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    if status == 407:
        headers.append((b"proxy-authenticate", b'Basic realm="openma egress"'))
    if conn.our_state not in (h11.SEND_RESPONSE, h11.IDLE):
        return
    try:
        await send(conn, stream, h11.Response(status_code=status, headers=headers))
        await send(conn, stream, h11.Data(data=body))
        await send(conn, stream, h11.EndOfMessage())
    except (*STREAM_ERRORS, h11.LocalProtocolError):
        return


async def relay(
    client: h11.Connection,
    client_stream: anyio.abc.ByteStream,
    upstream: h11.Connection,
    upstream_stream: anyio.abc.ByteStream,
    request: h11.Request,
    exchange: Exchange,
) -> h11.Connection | None:
    """Relay one request (already rewritten in ``request``) and its response, streaming both bodies.

    Returns the h11 connection for the upstream's next request, or ``None`` when the upstream connection
    cannot carry another (it is closing, or the exchange ended early). ``Refused`` (the client gets it) when
    the request is malformed or the upstream fails before responding; ``UpstreamBroken`` when the upstream
    fails mid-response (the client connection must be dropped)."""
    try:
        await send(upstream, upstream_stream, request)
    except STREAM_ERRORS:
        raise Refused(502, "the upstream connection failed") from None
    if client.client_is_waiting_for_100_continue:
        await send(client, client_stream, h11.InformationalResponse(status_code=100, headers=[]))
    while True:
        try:
            event = await next_event(client, client_stream)
        except h11.RemoteProtocolError:
            raise Refused(400, "malformed request body") from None
        if isinstance(event, h11.Data):
            exchange.bytes_up += len(event.data)
            try:
                await send(upstream, upstream_stream, event)
            except STREAM_ERRORS:
                raise Refused(502, "the upstream connection failed") from None
        elif isinstance(event, h11.EndOfMessage):
            try:
                await send(upstream, upstream_stream, h11.EndOfMessage())
            except STREAM_ERRORS:
                raise Refused(502, "the upstream connection failed") from None
            break
        else:  # the client went away mid-body
            raise UpstreamBroken("the client closed the request body")
    return await _relay_response(client, client_stream, upstream, upstream_stream, request.method, exchange)


async def _relay_response(
    client: h11.Connection,
    client_stream: anyio.abc.ByteStream,
    upstream: h11.Connection,
    upstream_stream: anyio.abc.ByteStream,
    method: bytes,
    exchange: Exchange,
) -> h11.Connection | None:
    while True:
        try:
            event = await next_event(upstream, upstream_stream)
        except h11.RemoteProtocolError:
            raise Refused(502, "the upstream sent a malformed response") from None
        if isinstance(event, h11.InformationalResponse):
            continue  # 100 Continue was the proxy's to answer; other 1xx are not relayed
        if isinstance(event, h11.Response):
            break
        raise Refused(502, "the upstream closed the connection without a response")
    exchange.status = event.status_code
    response = h11.Response(status_code=event.status_code, headers=response_headers(event.headers), reason=event.reason)
    await send(client, client_stream, response)
    length = _fixed_length(method, event)
    if length is not None and isinstance(upstream_stream, SocketStream):
        await _relay_fixed_body(client, client_stream, upstream, upstream_stream, length, exchange)
        if upstream.their_state is h11.DONE:  # the whole body came with the head
            upstream.start_next_cycle()
            return upstream
        return h11.Connection(h11.CLIENT) if _keep_alive(event) else None
    while True:
        try:
            body = await next_event(upstream, upstream_stream)
        except h11.RemoteProtocolError:
            raise UpstreamBroken("the upstream sent a malformed body") from None
        if isinstance(body, h11.Data):
            exchange.bytes_down += len(body.data)
            await send(client, client_stream, body)
        elif isinstance(body, h11.EndOfMessage):
            await send(client, client_stream, h11.EndOfMessage())
            break
        else:
            raise UpstreamBroken("the upstream closed the connection mid-body")
    if upstream.our_state is h11.DONE and upstream.their_state is h11.DONE:
        upstream.start_next_cycle()
        return upstream
    return None


def _fixed_length(method: bytes, response: h11.Response) -> int | None:
    """The body length of a ``Content-Length`` response that has a body; ``None`` for any other framing."""
    if method == b"HEAD" or response.status_code in (204, 304) or response.status_code < 200:
        return None
    length: int | None = None
    for name, value in response.headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)  # h11 accepted the response: a valid, unambiguous length
    return length


def _keep_alive(response: h11.Response) -> bool:
    return response.http_version == b"1.1" and b"close" not in connection_tokens(response.headers)


async def _relay_fixed_body(
    client: h11.Connection,
    client_stream: anyio.abc.ByteStream,
    upstream: h11.Connection,
    upstream_stream: SocketStream,
    length: int,
    exchange: Exchange,
) -> None:
    """Relay a ``Content-Length`` body of ``length`` bytes: what h11 already holds, then straight from the
    upstream socket into one buffer and out to the client, without h11 parsing (the client side's h11
    still frames and counts it). The upstream's h11 connection is left mid-body unless the whole body came
    with the head. ``UpstreamBroken`` when the upstream closes short of ``length``."""
    remaining = length
    while remaining:  # body bytes that arrived with the response head
        try:
            event = upstream.next_event()
        except h11.RemoteProtocolError:
            raise UpstreamBroken("the upstream sent a malformed body") from None
        if event is h11.NEED_DATA:
            break
        if not isinstance(event, h11.Data):
            raise UpstreamBroken("the upstream closed the connection mid-body")
        remaining -= len(event.data)
        exchange.bytes_down += len(event.data)
        await send(client, client_stream, event)
    if remaining:
        with memoryview(bytearray(min(CHUNK, remaining))) as buffer:
            while remaining:
                try:
                    count = await upstream_stream.receive_into(buffer[: min(len(buffer), remaining)])
                except STREAM_ERRORS:
                    count = 0
                if not count:
                    raise UpstreamBroken("the upstream closed the connection mid-body")
                remaining -= count
                exchange.bytes_down += count
                data = cast(bytes, buffer[:count])  # h11 passes a memoryview through unchanged
                for part in client.send_with_data_passthrough(h11.Data(data=data)) or ():
                    await client_stream.send(part)
    elif upstream.their_state is not h11.DONE:
        try:
            upstream.next_event()  # the EndOfMessage after the last buffered byte
        except h11.RemoteProtocolError:
            raise UpstreamBroken("the upstream sent a malformed body") from None
    await send(client, client_stream, h11.EndOfMessage())


__all__ = [
    "CHUNK",
    "Exchange",
    "Refused",
    "UpstreamBroken",
    "next_event",
    "receive",
    "refuse",
    "relay",
    "request_headers",
    "response_headers",
    "send",
]
