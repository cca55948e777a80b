"""Measuring traffic across a team: a 1 ms UDP probe stream and a long-lived TCP stream.

Role: the instruments team tests and benchmarks use to tell how long a failover
interrupts traffic and whether connections survive it:

* :class:`UdpProbeStream` sends a numbered datagram every ``interval`` from one
  namespace to an echo in another and counts the answers (so it covers both directions
  through the team). The outage is the longest run of lost probes, measured from the
  first lost probe's send time to the next answered probe's send time. Sender and echo
  are separate processes (``python -m nonstop.net.team_traffic client|echo``): threads of
  a busy test process stall each other on the GIL for tens of milliseconds under load,
  which looked like network loss;
* :class:`TcpStream` keeps one TCP connection sending from one namespace to a sink in
  another; ``finish`` checks every byte arrived on the same connection.

Must NOT: address anything but the given lab addresses.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

_PROBE = struct.Struct("!Id")


@dataclass(frozen=True)
class ProbeResult:
    sent: int
    received: int
    longest_gap: float
    """Seconds from the first lost probe of the longest loss run to the next answered probe."""

    @property
    def lost(self) -> int:
        return self.sent - self.received


def probe_result(sent_at: list[float], answered: set[int]) -> ProbeResult:
    """Loss runs from send times and the sequence numbers that came back."""
    sent = len(sent_at)
    longest = 0.0
    run_start: int | None = None
    for seq in range(sent):
        if seq not in answered:
            if run_start is None:
                run_start = seq
        elif run_start is not None:
            longest = max(longest, sent_at[seq] - sent_at[run_start])
            run_start = None
    if run_start is not None and sent:
        longest = max(longest, sent_at[-1] - sent_at[run_start])
    return ProbeResult(sent=sent, received=len([s for s in answered if s < sent]), longest_gap=longest)


def _run_echo(ip: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(64)
        sock.sendto(data, peer)


def _run_client(ip: str, port: int, interval: float, drain: float) -> None:
    """Send until stdin closes, wait ``drain`` for late answers, print the result JSON."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((ip, port))
    sock.settimeout(0.1)
    sent_at: list[float] = []
    answered: set[int] = set()
    stop = threading.Event()
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                answered.add(_PROBE.unpack(sock.recv(64)[: _PROBE.size])[0])
            except (TimeoutError, OSError, struct.error):
                continue

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=receive, daemon=True).start()
    threading.Thread(target=watch_stdin, daemon=True).start()
    print("ready", flush=True)
    seq = 0
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        sent_at.append(time.monotonic())
        try:
            sock.send(_PROBE.pack(seq, sent_at[-1]))
        except OSError:
            pass
        seq += 1
        next_at += interval
        if next_at < time.monotonic() - 0.05:
            next_at = time.monotonic()  # after a stall, do not burst to catch up
    time.sleep(drain)
    done.set()
    result = probe_result(sent_at, set(answered))
    print(json.dumps({"sent": result.sent, "received": result.received, "longest_gap": result.longest_gap}))


class UdpProbeStream:
    def __init__(self, client_ns: str, server_ns: str, server_ip: str, port: int = 7007, interval: float = 0.001):
        from nonstop.net.team_testbed import popen_in

        argv = [sys.executable, "-m", "nonstop.net.team_traffic"]
        self.echo = popen_in(server_ns, [*argv, "echo", server_ip, str(port)], stdout=subprocess.PIPE, text=True)
        self._ready(self.echo)
        self.client = popen_in(client_ns, [*argv, "client", server_ip, str(port), "--interval", str(interval)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._ready(self.client)

    def _ready(self, proc: subprocess.Popen[Any]) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            self._kill()
            raise RuntimeError(f"probe process failed to start ({proc.args!r}): {line!r}")

    def _kill(self) -> None:
        for proc in (getattr(self, "client", None), self.echo):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    def start(self) -> UdpProbeStream:
        return self  # the processes already run; kept for symmetry with TcpStream

    def stop(self) -> ProbeResult:
        try:
            out, _ = self.client.communicate(input="", timeout=10)
            data = json.loads(out)
        finally:
            self._kill()
        return ProbeResult(sent=data["sent"], received=data["received"], longest_gap=data["longest_gap"])


class TcpStream:
    """One TCP connection that keeps sending ``chunk`` bytes every ``pause`` seconds."""

    def __init__(self, client_ns: str, server_ns: str, server_ip: str, port: int = 7008,
                 chunk: int = 16384, pause: float = 0.002):
        from nonstop.net import netns

        self.listener = netns.call(server_ns, socket.socket)  # made in the namespace, used from here
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((server_ip, port))
        self.listener.listen(1)
        self.client = netns.call(client_ns, socket.socket)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nonstop.net.team_traffic")
    sub = parser.add_subparsers(dest="role", required=True)
    echo = sub.add_parser("echo", help="answer every datagram (run in the server namespace)")
    client = sub.add_parser("client", help="send probes until stdin closes; print the result JSON")
    for p in (echo, client):
        p.add_argument("ip")
        p.add_argument("port", type=int)
    client.add_argument("--interval", type=float, default=0.001)
    client.add_argument("--drain", type=float, default=0.2)
    args = parser.parse_args(argv)
    if args.role == "echo":
        _run_echo(args.ip, args.port)
    else:
        _run_client(args.ip, args.port, args.interval, args.drain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
