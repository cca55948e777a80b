"""UDP heartbeats: the agent's sender (one socket per link) and the controller's receiver.

Role: move heartbeat datagrams. The sender, in the agent, sends every ``interval`` on
**every** link of its host — each link has its own socket, bound to the host's address on
that link and, when a device is named, pinned to it with SO_BINDTODEVICE, so a datagram
for link eth1 can never leave through eth0 when eth1's cable is cut (the kernel would
otherwise happily route around the cut and hide it). The receiver, in the controller,
listens on one socket per network and hands every datagram to the pure
``HeartbeatVerifier``; accepted heartbeats go to a callback.

Timing: the sender sends on a fixed grid (start + k·interval) so scheduler delays do not
accumulate into drift; if it falls more than one interval behind (CPU starved), it sends
now and re-anchors instead of bursting to catch up. It runs in a thread of its own (sending,
and reading acknowledgements between sends) at a raised scheduling priority for that thread
only (nice −10, like corosync's realtime scheduling but gentler): an agent busy starting guests
— its event loop held up by netlink work, the host's CPUs saturated by tenants — still sends
on time, which is what kept a loaded host from being declared dead and fenced. Children the
agent forks from other threads (guests) keep the normal priority. The receiver reads every queued
datagram each time its socket is readable (``drain``), and the monitor drains before it
evaluates, so a starved controller does not mistake its own lateness for silence.

Acknowledgements: the receiver answers every accepted heartbeat with an ``ack`` datagram
(same codec, same key, host = the controller's name) to the sender's socket; the sender
records per link when it was last acknowledged (``controller_silence``), which is what an
agent's self-fencing watches ("heard nothing from the controller").

Must not: decide liveness (core/ha/liveness.py does) or parse bytes itself (core codec).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nonstop.core.ha.heartbeat import Heartbeat, HeartbeatVerifier, Reception, Verdict, encode
from nonstop.vital import vital_thread

log = logging.getLogger(__name__)

ACK = "ack"
"""``agent_state`` of the controller's acknowledgement datagrams (same codec, same key)."""

StatusProvider = Callable[[], tuple[str, bytes]]
"""Returns (agent state, guests digest) for the next heartbeat."""


@dataclass(frozen=True)
class HeartbeatLink:
    """One path from an agent to the controller."""

    name: str
    """The link's name as carried in the datagram (the host NIC or team, e.g. ``eth0``)."""
    target: tuple[str, int]
    """The controller's address and port on this link's network."""
    source: str | None = None
    """Local address to bind (the host's address on this link)."""
    device: str | None = None
    """Interface to pin the socket to (SO_BINDTODEVICE; needs root or CAP_NET_RAW)."""


@dataclass
class LinkCounters:
    sent: int = 0
    errors: int = 0
    last_error: str = ""


def _link_socket(link: HeartbeatLink) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if link.device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.device.encode() + b"\0")
        if link.source:
            sock.bind((link.source, 0))
        # Heartbeats are control traffic: ask for the interactive DSCP class (CS6).
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
    except OSError:
        sock.close()
        raise
    return sock


class HeartbeatSender:
    """Sends a heartbeat on every link every ``interval`` seconds until stopped."""

    def __init__(
        self,
        cluster: str,
        host: str,
        key: bytes,
        links: Iterable[HeartbeatLink],
        *,
        interval: float = 0.1,
        status: StatusProvider = lambda: ("ready", b""),
        incarnation: int | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.cluster, self.host, self.key = cluster, host, key
        self.links = list(links)
        if not self.links:
            raise ValueError("a sender needs at least one link")
        self.interval = interval
        self.status = status
        # A new life must order after every earlier one: wall-clock ns at start does that.
        self.incarnation = incarnation if incarnation is not None else time.time_ns()
        self.clock = clock
        self.sequence = 0
        self.counters = {link.name: LinkCounters() for link in self.links}
        self._sockets: dict[str, socket.socket] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_status: tuple[str, bytes] = ("ready", b"")
        self.paused_links: set[str] = set()
        """Links on which nothing is sent (tests and chaos: a silent link without cutting it)."""
        self.ack_verifier = HeartbeatVerifier(cluster, key)
        self.last_ack: dict[str, float] = {}
        """Per link: when (``time.monotonic()``) the controller last acknowledged a heartbeat."""

    def _socket(self, link: HeartbeatLink) -> socket.socket:
        sock = self._sockets.get(link.name)
        if sock is None:
            sock = self._sockets[link.name] = _link_socket(link)
        return sock

    def _close(self, name: str) -> None:
        sock = self._sockets.pop(name, None)
        if sock is not None:
            sock.close()

    def _read_acks(self, link: str, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable from an absent controller, etc.
                return
            now = time.monotonic()
            reception = self.ack_verifier.receive(data, now)
            if reception.verdict is Verdict.ACCEPTED and reception.heartbeat and reception.heartbeat.agent_state == ACK:
                self.last_ack[link] = now

    def controller_silence(self, now: float) -> float | None:
        """Seconds since the controller acknowledged anything on any link; None if it never did.

        The agent's self-fencing uses this: silent for the self-fence timeout → stop guests.
        """
        if not self.last_ack:
            return None
        return now - max(self.last_ack.values())

    def send_once(self) -> int:
        """Send one heartbeat (one sequence number) on every link; returns how many went out."""
        self.sequence += 1
        try:
            self._last_status = self.status()
        except Exception:  # read from another thread mid-update: send the last one, never skip a beat
            log.debug("heartbeat status provider failed; sending the previous status", exc_info=True)
        state, digest = self._last_status
        sent = 0
        for link in self.links:
            if link.name in self.paused_links:
                continue
            counters = self.counters[link.name]
            heartbeat = Heartbeat(
                self.cluster, self.host, link.name, self.incarnation, self.sequence, self.clock(), state, digest
            )
            try:
                self._socket(link).sendto(encode(heartbeat, self.key), link.target)
            except OSError as exc:
                # A cut cable shows as ENETUNREACH/EADDRNOTAVAIL: count it, keep the other links going.
                counters.errors += 1
                counters.last_error = exc.strerror or str(exc)
                self._close(link.name)
                continue
            counters.sent += 1
            sent += 1
        return sent

    def _wait_for_acks(self, until: float) -> None:
        """Read acknowledgements until ``until`` (monotonic seconds) or stop."""
        while not self._stop.is_set():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            socks = dict(self._sockets)
            if not socks:
                self._stop.wait(remaining)
                return
            try:
                readable, _, _ = select.select(list(socks.values()), [], [], remaining)
            except (OSError, ValueError):  # a socket closed under us: next round
                return
            for name, sock in socks.items():
                if sock in readable:
                    self._read_acks(name, sock)

    def _run_thread(self) -> None:
        with contextlib.suppress(OSError):  # not permitted (no CAP_SYS_NICE): normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        anchor = time.monotonic()
        k = 0
        try:
            while not self._stop.is_set():
                self.send_once()
                k += 1
                due = anchor + k * self.interval
                now = time.monotonic()
                if now - due > self.interval:
                    # Starved: we just sent (late); re-anchor one interval from now rather than
                    # bursting to catch up.
                    anchor, k = now + self.interval, 0
                    due = anchor
                self._wait_for_acks(due)
        finally:
            for name in list(self._sockets):
                self._close(name)

    def start(self) -> threading.Thread:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            # The sender is what keeps this host alive in the controller's eyes: if it dies, the
            # process goes too (its supervisor restarts it) rather than beating no more.
            self._thread = vital_thread(self._run_thread, f"heartbeat-sender-{self.host}", stopping=self._stop.is_set)
        return self._thread

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None


HeartbeatCallback = Callable[[Heartbeat, float], None]
"""Called with every accepted heartbeat and its arrival time (receiver's monotonic seconds)."""


@dataclass
class HeartbeatReceiver:
    """Listens on ``endpoints`` (one per network), verifies, and reports accepted heartbeats."""

    verifier: HeartbeatVerifier
    endpoints: list[tuple[str, int]]
    on_heartbeat: HeartbeatCallback
    on_refused: Callable[[Reception, tuple[str, int]], None] | None = None
    clock: Callable[[], float] = time.monotonic
    ack_as: str | None = "controller"
    """Acknowledge every accepted heartbeat to its sender under this name (None: never), so
    agents know the controller hears them — the input of their self-fencing."""
    _sockets: list[socket.socket] = field(default_factory=list)
    _ack_incarnation: int = field(default_factory=time.time_ns)
    _ack_sequence: int = 0

    def _ack(self, sock: socket.socket, heartbeat: Heartbeat, peer: tuple[str, int]) -> None:
        if self.ack_as is None:
            return
        self._ack_sequence += 1
        ack = Heartbeat(self.verifier.cluster, self.ack_as, heartbeat.link, self._ack_incarnation,
                        self._ack_sequence, time.monotonic_ns(), ACK, b"")
        with contextlib.suppress(OSError):
            sock.sendto(encode(ack, self.verifier.key), peer)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (address, port) of every socket (ports chosen by the kernel for port 0)."""
        return [sock.getsockname()[:2] for sock in self._sockets]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self.endpoints:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Room for a few seconds of heartbeats from many hosts if we are starved.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(address)
            self._sockets.append(sock)
            loop.add_reader(sock.fileno(), self._drain_socket, sock)

    def _drain_socket(self, sock: socket.socket) -> int:
        count = 0
        while True:
            try:
                data, peer = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                log.debug("heartbeat socket error: %s", exc)
                return count
            count += 1
            now = self.clock()
            reception = self.verifier.receive(data, now)
            if reception.verdict is Verdict.ACCEPTED and reception.heartbeat is not None:
                self.on_heartbeat(reception.heartbeat, now)
                self._ack(sock, reception.heartbeat, peer)
            elif self.on_refused is not None:
                self.on_refused(reception, peer)

    def drain(self) -> int:
        """Read every datagram already queued on every socket; returns how many."""
        return sum(self._drain_socket(sock) for sock in self._sockets)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()
