"""The L7 proxy's backend side: one request in flight (``Exchange``) and the pooled connection
to a backend that carries it (``HttpUpstream``).

Role: send a request's bytes upstream and pass the response back to the client as it arrives:
the head rewritten once (hop-by-hop headers out, our Connection header in; memoized per
backend head), the body unparsed and counted by Content-Length, or through httptools only
when chunked. The common case — a final response whose head and whole body arrive in one
read, with a head seen before — costs one dict lookup and one write. Back-pressure: a full
client pauses reading here, a full upstream pauses the client.

The other sides are seen through two Protocols defined here, so this module imports neither
the client side nor the pool: ``ClientSide`` (what an exchange needs of its client
connection, ``http_proxy.HttpClient``) and ``UpstreamEvents`` (what a connection reports to
the pool that owns it, ``http_dispatch.UpstreamPool``).

Must not: choose backends or decide retries (the upstream pool and core.lb.retry do), parse
requests (http_proxy does), or import the client side, the upstream pool or the service.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from httptools import HttpParserError, HttpResponseParser

from nonstop.core.lb.pool import Backend
from nonstop.core.lb.retry import Failure
from nonstop.lb.http_head import (
    BODY_CHUNKED,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    RESPONSE_CLOSE,
    RESPONSE_HEAD,
    RESPONSE_HEAD_CACHES,
    RESPONSE_HTTP10_KEEP_ALIVE,
    BadResponse,
    response_head_cached,
)

MAX_RESPONSE_HEAD = 64 * 1024

# reasons a client's reading is paused (a bitmask: resume only when none is left)
PAUSE_PIPELINE, PAUSE_UPSTREAM_FULL, PAUSE_UNSENT = 1, 2, 4


class ClientSide(Protocol):
    """What an exchange and its upstream connection use of the client connection
    (``nonstop.lb.http_proxy.HttpClient``)."""

    transport: asyncio.Transport | None
    client_ip: bytes
    closing: bool
    paused: int
    write_paused: bool

    def write(self, data: bytes) -> None: ...

    def pause(self, reason: int) -> None: ...

    def resume(self, reason: int) -> None: ...

    def send_error(self, ex: Exchange, status: int, detail: str) -> None:
        """A proxy-made answer for ``ex`` in its place in the response order."""

    def exchange_finished(self, ex: Exchange) -> None:
        """The response to ``ex`` is complete: go on with the connection's next request."""


class UpstreamEvents(Protocol):
    """What an upstream connection reports to the pool that owns it
    (``nonstop.lb.http_dispatch.UpstreamPool``)."""

    def exchange_done(self, up: HttpUpstream, ex: Exchange) -> None:
        """The whole response to ``ex`` went to the client."""

    def upstream_failed(self, up: HttpUpstream, failure: Failure, detail: str) -> None:
        """The backend answered something unusable: abort ``up``, retry or fail its exchange."""

    def upstream_lost(self, up: HttpUpstream, exc: Exception | None) -> None:
        """The connection closed (EOF or error), busy or parked."""


class Exchange:
    """One request: its head for upstream, body bookkeeping, and where it is.

    Created once per request, so only the fields every request needs get a fresh object;
    body and retry bookkeeping start as shared empty tuples and become lists only when a
    body or a retry appears."""

    __slots__ = (
        "client", "method", "head", "keep_alive", "http10", "is_head", "chunked", "chunks", "unsent",
        "unsent_bytes", "body_bytes", "complete", "tried", "backend", "upstream", "sent", "started",
        "answered", "cancelled", "queued_at", "response_flags",
    )  # fmt: skip

    def __init__(
        self, client: ClientSide, method: bytes, head: bytes, keep_alive: bool, http10: bool, chunked: bool, complete: bool
    ) -> None:
        self.client = client
        self.method = method
        self.head = head
        self.keep_alive = keep_alive
        self.http10 = http10
        self.is_head = is_head = method == b"HEAD"
        self.chunked = chunked
        self.chunks: list[bytes] | tuple[()] | None = ()  # replay buffer; None once the body outgrew it
        self.unsent: list[bytes] | tuple[()] = ()
        self.unsent_bytes = 0
        self.body_bytes = 0
        self.complete = complete
        self.tried: tuple[str, ...] = ()
        self.backend: Backend | None = None
        self.upstream: HttpUpstream | None = None
        self.sent = False
        self.started = 0.0
        self.answered = False  # some response bytes went to the client
        self.cancelled = False
        self.queued_at = 0.0
        self.response_flags = (0 if keep_alive else RESPONSE_CLOSE) | (RESPONSE_HEAD if is_head else 0) | (
            RESPONSE_HTTP10_KEEP_ALIVE if http10 and keep_alive else 0
        )
        """Which rewrite of a backend's response head this client needs (with
        RESPONSE_CLOSE added at answer time when the client connection is closing)."""


class HttpUpstream(asyncio.Protocol):
    """A connection to one backend; carries one exchange at a time, then goes back to the pool.

    Response framing is read from the head (Content-Length: count bytes; no httptools call
    on the hot path); only chunked bodies go through an httptools response parser."""

    __slots__ = (
        "owner", "backend", "transport", "parser", "exchange", "head_buf", "head_done", "received",
        "done", "reusable", "framed", "deadline", "status", "idle_since", "remaining", "paused_client",
        "reading_paused", "pending",
    )  # fmt: skip

    def __init__(self, owner: UpstreamEvents, backend: Backend) -> None:
        self.owner = owner
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser: HttpResponseParser | None = None
        self.exchange: Exchange | None = None
        self.head_buf = b""
        self.head_done = False
        self.received = False
        self.done = False
        self.reusable = True
        self.framed = True
        self.deadline = 0.0
        self.status = 0
        self.idle_since = 0.0
        self.remaining = 0
        self.paused_client: ClientSide | None = None
        """The client whose reads this connection's full write buffer paused (resumed even
        if the exchange ended meanwhile)."""
        self.reading_paused = False
        self.pending: bytes | None = None
        """Request bytes queued for this loop iteration's batched send (``UpstreamPool.send``)."""

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # a backend talking out of turn: not safe to reuse
            self.reusable = False
            if self.transport is not None:
                self.transport.abort()
            return
        self.received = True
        if not self.head_done:
            if not self.head_buf:
                # the common case first: a final response whose head and whole body are in
                # this one read, with a head seen before (one dict lookup)
                end = data.find(b"\r\n\r\n")
                if end > 0:
                    hit = RESPONSE_HEAD_CACHES[ex.response_flags | ex.client.closing].get(data[: end + 2])
                    if hit is not None and hit[3] >= 200 and hit[1] == len(data) - end - 4:
                        self.head_done = True
                        self.done = True
                        self.status = hit[3]
                        if not hit[2]:
                            self.reusable = False
                        ex.answered = True
                        t = ex.client.transport
                        if t is not None:
                            t.write(hit[0] + data[end + 4 :])
                        self.owner.exchange_done(self, ex)
                        return
            data = self._head(ex, data)
            if not self.head_done:
                if data:
                    ex.answered = True
                    ex.client.write(data)  # interim 1xx heads
                return
        elif self.parser is not None:
            self._feed_chunked(data)
        elif self.remaining >= 0:
            n = len(data)
            if n >= self.remaining:
                if n > self.remaining:
                    data = data[: self.remaining]
                    self.reusable = False  # bytes beyond the framing: never reuse
                self.remaining = 0
                self.done = True
            else:
                self.remaining -= n
        if data:
            ex.answered = True
            t = ex.client.transport
            if t is not None:
                t.write(data)
        if self.done:
            self.owner.exchange_done(self, ex)

    def _feed_chunked(self, data: bytes) -> None:
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            # a broken chunked body: end here and close the client connection, whose
            # response framing can no longer be trusted
            self.reusable = False
            self.done = True
            if self.exchange is not None:
                self.exchange.client.closing = True

    def _head(self, ex: Exchange, data: bytes) -> bytes:
        """Forward interim (1xx) heads and rewrite the final one; returns bytes to write."""
        buf = self.head_buf + data if self.head_buf else data
        out: list[bytes] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self.owner.upstream_failed(self, Failure.RESET_AFTER_RESPONSE_STARTED, "response head too big")
                    return b""
                self.head_buf = buf
                return b"".join(out)
            head, rest = buf[: end + 2], buf[end + 4 :]
            client = ex.client
            try:
                rewritten, body, reusable, status = response_head_cached(head, ex.response_flags | client.closing)
            except BadResponse as exc:
                self.head_buf = b""
                self.owner.upstream_failed(self, Failure.RESET_AFTER_RESPONSE_STARTED, str(exc))
                return b""
            out.append(rewritten)
            if 100 <= status < 200 and status != 101:
                buf = rest
                continue
            self.head_buf = b""
            self.head_done = True
            self.status = status
            self.reusable = reusable
            self.framed = body != BODY_UNTIL_CLOSE and status != 101
            if not self.framed:
                client.closing = True  # close-delimited body: the client learns the end by EOF
                self.reusable = False
                self.remaining = -1
                out.append(rest)
            elif body == BODY_NONE:
                self.done = True
                if rest:
                    self.reusable = False
            elif body == BODY_CHUNKED:
                self.parser = HttpResponseParser(self)
                self._feed_chunked(buf)  # the parser reads the head too
                out.append(rest)
            else:
                n = len(rest)
                if n >= body:
                    if n > body:
                        rest = rest[:body]
                        self.reusable = False
                    self.done = True
                    self.remaining = 0
                else:
                    self.remaining = body - n
                out.append(rest)
            return b"".join(out)

    # -- httptools callback (chunked responses only)
    def on_message_complete(self) -> None:
        self.done = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.resume_writing()
        self.owner.upstream_lost(self, exc)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.paused_client = self.exchange.client
            self.paused_client.pause(PAUSE_UPSTREAM_FULL)

    def resume_writing(self) -> None:
        client, self.paused_client = self.paused_client, None
        if client is not None:
            client.resume(PAUSE_UPSTREAM_FULL)

    def set_reading(self, on: bool) -> None:
        """Back-pressure from the client side: stop/start reading the response."""
        if self.transport is not None and self.reading_paused == on:
            self.reading_paused = not on
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()
