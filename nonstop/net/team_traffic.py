"""Measuring traffic across a team: a 1 ms UDP probe stream and a long-lived TCP stream.

Role: the instruments team tests and benchmarks use to tell how long a failover
interrupts traffic and whether connections survive it:

* :class:`UdpProbeStream` sends a numbered datagram every ``interval`` from one
  namespace to an echo socket in another; the longest stretch of send time whose probes
  never came back is the outage (it covers both directions through the team);
* :class:`TcpStream` keeps one TCP connection sending from one namespace to a sink in
  another; ``finish`` checks every byte arrived on the same connection.

Sockets are created inside the namespaces (``in_netns``) and then driven by threads of
the calling process. Must NOT: address anything but the given lab addresses.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

from nonstop.net.team_testbed import in_netns

_PROBE = struct.Struct("!Id")


@dataclass(frozen=True)
class ProbeResult:
    sent: int
    received: int
    longest_gap: float
    """Seconds of send time between two answered probes with only lost ones between."""

    @property
    def lost(self) -> int:
        return self.sent - self.received


class UdpProbeStream:
    def __init__(self, client_ns: str, server_ns: str, server_ip: str, port: int = 7007, interval: float = 0.001):
        self.interval = interval
        with in_netns(server_ns):
            self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.server.bind((server_ip, port))
        with in_netns(client_ns):
            self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.client.connect((server_ip, port))
        self.server.settimeout(0.2)
        self.client.settimeout(0.2)
        self.sent_at: list[float] = []
        self.answered: set[int] = set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._echo, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
            threading.Thread(target=self._send, daemon=True),
        ]

    def _echo(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.server.recvfrom(64)
                self.server.sendto(data, peer)
            except (TimeoutError, OSError):
                continue

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.client.recv(64)
            except (TimeoutError, OSError):
                continue
            self.answered.add(_PROBE.unpack(data[: _PROBE.size])[0])

    def _send(self) -> None:
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            self.sent_at.append(time.monotonic())
            try:
                self.client.send(_PROBE.pack(seq, self.sent_at[-1]))
            except OSError:
                pass
            seq += 1
            next_at += self.interval
            if next_at < time.monotonic() - 0.05:
                next_at = time.monotonic()  # after a stall, do not burst to catch up

    def start(self) -> UdpProbeStream:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, drain: float = 0.2) -> ProbeResult:
        sent = len(self.sent_at)
        time.sleep(drain)  # late answers of the last probes
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self.server.close()
        self.client.close()
        answered = sorted(s for s in self.answered if s < sent)
        longest = 0.0
        for before, after in zip(answered, answered[1:], strict=False):
            if after - before > 1:
                longest = max(longest, self.sent_at[after] - self.sent_at[before])
        if answered:
            longest = max(longest, self.sent_at[answered[0]] - self.sent_at[0])
        else:
            longest = self.sent_at[-1] - self.sent_at[0] if self.sent_at else 0.0
        return ProbeResult(sent=sent, received=len(answered), longest_gap=longest)


class TcpStream:
    """One TCP connection that keeps sending ``chunk`` bytes every ``pause`` seconds."""

    def __init__(self, client_ns: str, server_ns: str, server_ip: str, port: int = 7008,
                 chunk: int = 16384, pause: float = 0.002):
        with in_netns(server_ns):
            self.listener = socket.socket()
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((server_ip, port))
            self.listener.listen(1)
        with in_netns(client_ns):
            self.client = socket.socket()
        self.client.settimeout(5)
        self.client.connect((server_ip, port))
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(10)
        self.chunk = b"x" * chunk
        self.pause = pause
        self.sent = 0
        self.received = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._receiver = threading.Thread(target=self._receive, daemon=True)

    def _send(self) -> None:
        try:
            while not self._stop.is_set():
                self.client.sendall(self.chunk)
                self.sent += len(self.chunk)
                time.sleep(self.pause)
            self.client.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _receive(self) -> None:
        try:
            while True:
                data = self.conn.recv(65536)
                if not data:
                    return
                self.received += len(data)
        except BaseException as exc:
            self.error = exc

    def start(self) -> TcpStream:
        self._sender.start()
        self._receiver.start()
        return self

    def finish(self, timeout: float = 10.0) -> tuple[int, int]:
        """Stop sending; wait for the sink to see the end; (sent, received)."""
        self._stop.set()
        self._sender.join(timeout)
        self._receiver.join(timeout)
        for sock in (self.client, self.conn, self.listener):
            sock.close()
        if self.error is not None:
            raise self.error
        return self.sent, self.received
