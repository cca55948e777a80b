"""The L7 data plane's client side: an HTTP/1.1 reverse proxy on asyncio Protocols and httptools.

Role: read requests from client connections, check them (smuggling shapes, limits, timeouts)
and hand them to the service, which sends them on pooled upstream connections
(nonstop/lb/http_upstream.py) — as fast as Python allows: Protocol callbacks (no streams),
direct ``transport.write``, httptools callbacks that only collect, and a fast path for a
whole plain request in one read (validated by C callbacks, forwarded as sent plus our
forwarding headers). Retries follow ``nonstop.core.lb.retry``: a request whose backend
failed before answering goes to another backend, never one already tried.

One ``Exchange`` per request. A client connection handles its requests in order (HTTP/1.1
pipelining: later requests wait, their bodies buffered with reads paused). Every
timeout (header read, idle keep-alive, body, upstream, queue, drain) is a deadline field
checked by the service's sweeper a few times a second — no timer objects per request.

The service and its upstream pool are seen through the ``HttpService`` and ``Upstreams``
Protocols (defined here), so this module imports only http_head and http_upstream below it,
never the service or the upstream pool. A connection keeps the pool in a slot of its own:
one attribute load and a plain method call per request, as when the pool was a mixin.

Must not: decide policy (the pool and core.lb.retry do), let one connection's error escape
into the event loop (every failure becomes a response or a closed connection), or import
the service or the upstream pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from nonstop.core.spec import ServiceSpec
from nonstop.lb.http_head import REQUEST_HOP_BY_HOP, error_response, plain_request
from nonstop.lb.http_upstream import PAUSE_PIPELINE, PAUSE_UNSENT, Exchange, HttpUpstream
from nonstop.lb.stats import ServiceStats

log = logging.getLogger("nonstop.lb.http")

_H_CONTENT_LENGTH, _H_HOST, _H_TRANSFER_ENCODING, _H_CONNECTION, _H_FORWARDED_FOR, _H_DROP = range(1, 7)
_HEADER_KIND: dict[bytes, int] = {
    **{name: _H_DROP for name in REQUEST_HOP_BY_HOP | {b"x-forwarded-proto", b"via"}},
    b"content-length": _H_CONTENT_LENGTH,
    b"host": _H_HOST,
    b"transfer-encoding": _H_TRANSFER_ENCODING,
    b"connection": _H_CONNECTION,
    b"x-forwarded-for": _H_FORWARDED_FOR,
}
"""Request headers that need a look; every other header is forwarded as it came."""
_CONNECTION_PLAIN = frozenset({b"", b"close", b"keep-alive"})

REPLAY_LIMIT = 64 * 1024
"""Request bodies up to this size are kept for a retry; larger ones stream and cannot be replayed."""
PAUSE_BUFFER = 256 * 1024

DEADLINE_NONE, DEADLINE_HEADER, DEADLINE_IDLE, DEADLINE_BODY = 0, 1, 2, 3


class Upstreams(Protocol):
    """What a client connection uses of its service's upstream pool
    (``nonstop.lb.http_dispatch.UpstreamPool``)."""

    def dispatch(self, ex: Exchange) -> None:
        """Send an exchange to a backend (or queue or answer it)."""

    def cancel(self, ex: Exchange) -> None:
        """The client went away: free what the exchange holds."""

    def send(self, up: HttpUpstream, data: bytes) -> None:
        """Queue request body bytes for an upstream connection."""


class HttpService(Protocol):
    """What a client connection uses of its service (``nonstop.lb.service.ServiceRuntime``)."""

    spec: ServiceSpec
    clients: set[HttpClient]
    stats: ServiceStats
    clock: float
    client_timeout: float

    @property
    def upstreams(self) -> Upstreams: ...


class ClientError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class HttpClient(asyncio.Protocol):
    """A client connection: parse requests, hand them to the service, write answers in order."""

    __slots__ = (
        "svc", "upstreams", "transport", "parser", "client_ip", "queue", "parsing", "in_head", "head_bytes",
        "url", "cl_count", "field_bytes", "te", "has_host", "parts", "xff", "drop", "tail", "error", "header_count",
        "max_headers", "max_header_bytes", "deadline", "deadline_kind", "closing", "paused", "write_paused",
        "closed",
    )  # fmt: skip

    def __init__(self, svc: HttpService) -> None:
        self.svc = svc
        self.upstreams = svc.upstreams
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.client_ip = b"unknown"
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.in_head = False
        self.head_bytes = 0
        self.url = b""
        self.cl_count = 0
        self.field_bytes = 0  # bytes of header fields so far in this head
        self.te = False
        self.has_host = False
        self.parts: list[bytes] = []
        """The upstream head's header lines, built as headers arrive (hop-by-hop ones left out)."""
        self.xff = b""
        self.drop: set[bytes] | None = None
        """Header names a Connection header declared hop-by-hop (removed from the upstream head)."""
        self.header_count = 0
        self.max_headers = svc.spec.max_headers
        self.max_header_bytes = svc.spec.max_header_bytes
        self.tail = b""
        self.error: ClientError | None = None
        self.deadline = 0.0
        self.deadline_kind = DEADLINE_NONE
        self.closing = False
        self.paused = 0
        self.write_paused = False
        self.closed = False

    # -- connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        svc = self.svc
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
        self.tail = b"X-Forwarded-For: " + self.client_ip + b"\r\nX-Forwarded-Proto: http\r\nVia: 1.1 nonstop\r\n\r\n"
        svc.clients.add(self)
        svc.stats.connections += 1
        svc.stats.active_connections += 1
        self.deadline = svc.clock + svc.spec.header_timeout
        self.deadline_kind = DEADLINE_HEADER
        if len(svc.clients) > svc.spec.max_client_connections:
            self.reject(ClientError(503, "too many client connections"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        svc = self.svc
        svc.clients.discard(self)
        svc.stats.active_connections -= 1
        for ex in self.queue:
            ex.cancelled = True
            self.upstreams.cancel(ex)
        self.queue.clear()

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None:
            t.write(data)

    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue and self.queue[0].upstream is not None:
            self.queue[0].upstream.set_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue and self.queue[0].upstream is not None:
            self.queue[0].upstream.set_reading(True)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.in_head and self.parsing is None and data[-4:] == b"\r\n\r\n" and len(data) <= self.max_header_bytes:
            plain = plain_request(data, self.max_headers)
            if plain is not None:
                # the fast path: a whole plain request (no body, keep-alive) in one read
                ex = Exchange(self, plain[0], plain[1] + self.tail, True, False, False, True)
                queue = self.queue
                queue.append(ex)
                svc = self.svc
                svc.stats.requests += 1
                self.deadline_kind = DEADLINE_NONE
                if len(queue) == 1:
                    self.upstreams.dispatch(ex)
                else:
                    self.pause(PAUSE_PIPELINE)
                return
        try:
            try:
                self.parser.feed_data(data)
            except HttpParserUpgrade as exc:
                self._after_upgrade(data, exc)
            if self.in_head:
                self.head_bytes += len(data)
                if self.head_bytes > self.max_header_bytes:
                    raise ClientError(431, "request head too large")
        except ClientError as exc:
            self.reject(exc)
        except HttpParserError as exc:
            self.reject(self.error or ClientError(400, f"malformed HTTP request ({exc})"))

    def _after_upgrade(self, data: bytes, exc: HttpParserUpgrade) -> None:
        # Upgrade/CONNECT heads are proxied as plain requests (Upgrade is hop-by-hop);
        # httptools resumed the parser, so the bytes after the head are fed again.
        while True:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            data = data[offset:]
            if not data:
                return
            try:
                self.parser.feed_data(data)
                return
            except HttpParserUpgrade as again:
                exc = again

    def reject(self, exc: ClientError) -> None:
        """Answer a client error and close; in-flight work of this connection is dropped."""
        svc = self.svc
        svc.stats.client_errors += 1
        svc.stats.count_response(exc.status)
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(error_response(exc.status, exc.detail, close=True))
            self.transport.close()

    # -- httptools callbacks (kept minimal: collect, check limits)
    def on_message_begin(self) -> None:
        spec = self.svc.spec
        self.max_headers = spec.max_headers
        self.max_header_bytes = spec.max_header_bytes
        self.in_head = True
        self.head_bytes = 0
        self.header_count = 0
        self.url = b""
        self.cl_count = 0
        self.field_bytes = 0
        self.te = False
        self.has_host = False
        self.parts = []
        self.xff = b""
        self.drop = None
        if self.deadline_kind != DEADLINE_HEADER:
            self.deadline = self.svc.clock + spec.header_timeout
            self.deadline_kind = DEADLINE_HEADER

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_header_bytes:
            self.error = ClientError(431, "request target too long")
            raise self.error

    def on_header(self, name: bytes, value: bytes) -> None:
        # the common header costs: two limit checks, one lower(), one dict lookup, one extend
        self.header_count = count = self.header_count + 1
        self.field_bytes = size = self.field_bytes + len(name) + len(value) + 4
        if count > self.max_headers or size > self.max_header_bytes:
            self.error = ClientError(431, f"more than {self.max_headers} header fields or {self.max_header_bytes} bytes")
            raise self.error
        kind = _HEADER_KIND.get(name.lower())
        if kind is None:
            self.parts.extend((name, b": ", value, b"\r\n"))
        else:
            self._special_header(kind, name, value)

    def _special_header(self, kind: int, name: bytes, value: bytes) -> None:
        if kind == _H_CONTENT_LENGTH:
            self.cl_count += 1
            if self.cl_count > 1:
                self.error = ClientError(400, "duplicate Content-Length")
                raise self.error
            if not value.strip().isdigit():
                self.error = ClientError(400, "invalid Content-Length")
                raise self.error
            self.parts.extend((name, b": ", value, b"\r\n"))
        elif kind == _H_HOST:
            self.has_host = True
            self.parts.extend((name, b": ", value, b"\r\n"))
        elif kind == _H_TRANSFER_ENCODING:
            if self.te or value.strip().lower() != b"chunked":
                self.error = ClientError(400, "unsupported Transfer-Encoding (only a single chunked)")
                raise self.error
            self.te = True  # re-declared by us: the body is re-chunked
        elif kind == _H_CONNECTION:
            tokens = {t.strip().lower() for t in value.split(b",")} - _CONNECTION_PLAIN
            if tokens:  # Connection: <token> names more hop-by-hop headers of this message
                self.drop = (self.drop or set()) | tokens
        elif kind == _H_FORWARDED_FOR:
            self.xff = self.xff + b", " + value if self.xff else value
        # other kinds: hop-by-hop or ours to set (Via, X-Forwarded-Proto): not forwarded

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.cl_count and self.te:
            self.error = ClientError(400, "both Content-Length and Transfer-Encoding")
            raise self.error
        parser = self.parser
        version = parser.get_http_version()
        if version == "1.1" and not self.has_host:
            self.error = ClientError(400, "HTTP/1.1 request without Host")
            raise self.error
        method = parser.get_method()
        parts = self.parts
        if self.drop:
            drop, kept = self.drop, []
            for i in range(0, len(parts), 4):
                if parts[i].lower() not in drop:
                    kept.extend(parts[i : i + 4])
            parts = kept
        if self.xff or self.te or version == "1.0":
            xff = self.xff + b", " + self.client_ip if self.xff else self.client_ip
            via = b"1.0 nonstop" if version == "1.0" else b"1.1 nonstop"
            te = b"Transfer-Encoding: chunked\r\n" if self.te else b""
            parts.append(b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: http\r\nVia: %b\r\n%b\r\n" % (xff, via, te))
        else:
            parts.append(self.tail)
        head = method + b" " + self.url + b" HTTP/1.1\r\n" + b"".join(parts)
        ex = Exchange(self, method, head, parser.should_keep_alive(), version == "1.0", self.te, False)
        self.parsing = ex
        self.queue.append(ex)
        svc = self.svc
        svc.stats.requests += 1
        self.deadline = svc.clock + svc.client_timeout
        self.deadline_kind = DEADLINE_BODY
        if len(self.queue) == 1:
            self.upstreams.dispatch(ex)
        else:
            self.pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        if ex.chunked:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        self._body(ex, body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        self.deadline_kind = DEADLINE_NONE
        if ex is None:
            return
        if ex.chunked:
            self._body(ex, b"0\r\n\r\n")
        ex.complete = True

    def _body(self, ex: Exchange, data: bytes) -> None:
        ex.body_bytes += len(data)
        if ex.chunks is not None:
            if ex.body_bytes > REPLAY_LIMIT:
                ex.chunks = None
            elif ex.chunks:
                ex.chunks.append(data)
            else:
                ex.chunks = [data]
        up = ex.upstream
        if up is not None and up.transport is not None:
            self.upstreams.send(up, data)
            return
        if ex.unsent:
            ex.unsent.append(data)
        else:
            ex.unsent = [data]
        ex.unsent_bytes += len(data)
        if ex.unsent_bytes > PAUSE_BUFFER:
            self.pause(PAUSE_UNSENT)

    # -- called by the service when the head-of-line exchange finished
    def exchange_finished(self, ex: Exchange) -> None:
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if self.transport is None:
            return
        if not ex.keep_alive or self.closing:
            self.closing = True
            self.transport.close()
            return
        if not ex.complete:
            # answered before the request body was read (e.g. an error): the rest of the body
            # would be parsed as a new request, so this connection cannot go on
            self.closing = True
            self.transport.close()
            return
        if self.queue:
            nxt = self.queue[0]
            self.resume(PAUSE_PIPELINE)
            self.upstreams.dispatch(nxt)
        elif not self.in_head:
            self.deadline = self.svc.clock + self.svc.client_timeout
            self.deadline_kind = DEADLINE_IDLE

    def send_error(self, ex: Exchange, status: int, detail: str) -> None:
        """A proxy-made answer for ``ex`` (502/503/504) in its place in the response order."""
        svc = self.svc
        svc.stats.count_response(status)
        close = not ex.keep_alive or not ex.complete
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(error_response(status, detail, close=close))
        ex.answered = True
        if close:
            self.closing = True
        self.exchange_finished(ex)

    def on_deadline(self, now: float) -> None:
        kind = self.deadline_kind
        self.deadline = 0.0
        self.deadline_kind = DEADLINE_NONE
        if kind == DEADLINE_HEADER and (self.in_head or not self.queue):
            if self.in_head:
                self.reject(ClientError(408, "request head not received in time"))
            elif self.transport is not None:
                self.closing = True
                self.transport.close()
        elif kind == DEADLINE_BODY:
            self.reject(ClientError(408, "request body not received in time"))
        elif kind == DEADLINE_IDLE and not self.queue and self.transport is not None:
            self.closing = True
            self.transport.close()
