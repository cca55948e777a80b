"""The L4 data plane: a TCP proxy of two asyncio Protocols per connection.

Role: accept a client, pick a backend (connect failures are retried on another backend:
nothing was read from the client yet, its reads stay paused until the upstream is
connected), then copy bytes both ways with ``transport.write``, pausing reads on one side
when the other side's write buffer is full, and passing half-closes (EOF) through.

Must not: look at the bytes, or decide policy (the service and the pool do).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from nonstop.core.lb.pool import Backend

if TYPE_CHECKING:
    from nonstop.lb.service import ServiceRuntime


class TcpUpstream(asyncio.Protocol):
    __slots__ = ("client", "transport", "eof")

    def __init__(self, client: TcpClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
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
    __slots__ = ("svc", "transport", "upstream", "backend", "tried", "eof", "key", "pending")

    def __init__(self, svc: ServiceRuntime) -> None:
        self.svc = svc
        self.transport: asyncio.Transport | None = None
        self.upstream: TcpUpstream | None = None
        self.backend: Backend | None = None
        self.tried: list[str] = []
        self.eof = False
        self.key = b""
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # uvloop may still deliver a first read after pause_reading() here: ``pending`` keeps it
        transport.pause_reading()  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        if peer:
            self.key = str(peer[0]).encode()
        self.svc.tcp_accepted(self)

    def data_received(self, data: bytes) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.write(data)
        elif up is None:
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
        if self.pending and upstream.transport is not None:
            upstream.transport.write(b"".join(self.pending))
            self.pending = []
        if self.eof and upstream.transport is not None and upstream.transport.can_write_eof():
            upstream.transport.write_eof()
        self.transport.resume_reading()
