"""The L4 data plane: a TCP proxy of two asyncio Protocols per connection.

Role: accept a client, pick a backend (connect failures are retried on another backend:
nothing was read from the client yet, its reads stay paused until the upstream is
connected), then copy bytes both ways with ``transport.write`` — once connected, each
protocol's ``data_received`` *is* the other transport's write, so no Python code runs per
read — pausing reads on one side when the other side's write buffer is full, and passing
half-closes (EOF) through.

The service is seen through the ``TcpService`` Protocol (defined here).

Must not: look at the bytes, decide policy (the service and the pool do), or import the
service.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from nonstop.core.lb.pool import Backend


class TcpService(Protocol):
    """What a client connection reports to its service (``nonstop.lb.service.ServiceRuntime``)."""

    def tcp_accepted(self, client: TcpClient) -> None:
        """A client connected (reads paused): pick a backend and connect to it."""

    def tcp_closed(self, client: TcpClient) -> None:
        """The client connection is gone: release its backend slot."""


class TcpUpstream(asyncio.Protocol):
    __slots__ = ("client", "transport", "eof", "data_received")

    def __init__(self, client: TcpClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.data_received = self._to_client  # type: ignore[method-assign]
        """Until ``TcpClient.connected``: a checked copy; after it, the client transport's
        own ``write``, so the event loop moves backend bytes with no Python frame between."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _to_client(self, data: bytes) -> None:
        t = self.client.transport
        if t is not None:
            t.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        t = self.client.transport
        if t is not None and t.can_write_eof() and not t.is_closing():
            t.write_eof()
        return not self.client.eof

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        t = self.client.transport
        if t is not None:
            if exc is not None:
                t.abort()
            else:
                t.close()

    def pause_writing(self) -> None:
        t = self.client.transport
        if t is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.client.transport
        if t is not None:
            t.resume_reading()


class TcpClient(asyncio.Protocol):
    __slots__ = ("svc", "transport", "upstream", "backend", "tried", "eof", "key", "pending", "data_received")

    def __init__(self, svc: TcpService) -> None:
        self.svc = svc
        self.transport: asyncio.Transport | None = None
        self.upstream: TcpUpstream | None = None
        self.backend: Backend | None = None
        self.tried: list[str] = []
        self.eof = False
        self.key = b""
        self.pending: list[bytes] = []
        self.data_received = self._before_connected  # type: ignore[method-assign]
        """Until the upstream is connected, bytes wait in ``pending``; then this becomes the
        upstream transport's ``write`` (see ``connected``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # uvloop may still deliver a first read after pause_reading() here: ``pending`` keeps it
        transport.pause_reading()  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        if peer:
            self.key = str(peer[0]).encode()
        self.svc.tcp_accepted(self)

    def _before_connected(self, data: bytes) -> None:
        self.pending.append(data)
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        up = self.upstream
        if up is not None and up.transport is not None:
            if up.eof:
                up.transport.close()
                return False
            if up.transport.can_write_eof():
                up.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        up = self.upstream
        if up is not None and up.transport is not None:
            if exc is not None:
                up.transport.abort()
            else:
                up.transport.close()
        self.svc.tcp_closed(self)

    def pause_writing(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    def connected(self, upstream: TcpUpstream) -> None:
        self.upstream = upstream
        if self.transport is None:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        ut = upstream.transport
        if ut is None:
            return
        if self.pending:
            ut.write(b"".join(self.pending))
            self.pending = []
        if self.eof and ut.can_write_eof():
            ut.write_eof()
        # Both directions now go transport to transport: each protocol's data_received is
        # the other transport's C write (the loop keeps the bound callable: set_protocol
        # refreshes it). Safe because whenever one side's connection is lost, its
        # connection_lost closes the other side (which stops reading) before the loop
        # closes the lost handle; until then a write to it is dropped, never raised.
        self.data_received = ut.write  # type: ignore[method-assign]
        self.transport.set_protocol(self)
        upstream.data_received = self.transport.write  # type: ignore[method-assign]
        ut.set_protocol(upstream)
        self.transport.resume_reading()
