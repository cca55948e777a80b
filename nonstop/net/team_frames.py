"""Raw sockets of the team daemon: link events, ARP link probes, failover announcements.

Role: build and parse the few messages the team daemon exchanges directly with the
kernel and on member NICs, below the nft data path:

* carrier changes as they happen, from a plain rtnetlink socket bound to
  ``RTMGRP_LINK`` (:class:`LinkWatcher`). pyroute2 0.9's sync ``IPRoute`` buffers event
  messages inside its own event loop whenever another ``IPRoute`` of the process is
  used, so ``select`` on its descriptor missed events for hundreds of milliseconds
  (measured here: 80-600 ms); only the netlink header, the ``ifinfomsg`` flags and
  ``IFLA_IFNAME`` are decoded;
* an ARP probe (RFC 5227: sender IP 0.0.0.0, sender MAC = the member's own MAC) for
  "up but dead" detection; Linux answers it with a unicast reply to that MAC and learns
  nothing from it;
* after an active-backup failover, a gratuitous ARP for each IPv4 address of the team
  (source MAC = the team's MAC) out of the new active member, and one RARP-style frame
  per MAC learned behind the team's bridge (guests), the way QEMU announces a migrated
  guest, so a switch relearns every MAC on the new port at once.

Member sockets are ``ETH_P_ALL`` with a classic-BPF filter that keeps only ARP: packet
taps run before the netdev ingress hook, so replies arriving on a backup member (whose
frames the data path drops) are still seen.

Must NOT: decide anything (the daemon and the pure machine do) or send anything but
ARP/RARP-style frames (the netlink socket only listens).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
AF_BRIDGE = 7
NUD_PERMANENT = 0x80
BROADCAST = b"\xff" * 6
MAX_ANNOUNCED_MACS = 256

# ldh [12]; jeq #0x806, L1, L2; L1: ret #65535; L2: ret #0
_ARP_ONLY = [(0x28, 0, 0, 12), (0x15, 0, 1, ETH_P_ARP), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]


def _mac(text: str) -> bytes:
    return bytes(int(p, 16) for p in text.split(":"))


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def arp_frame(op: int, src_mac: str, sender_ip: str, target_ip: str, dst: bytes = BROADCAST) -> bytes:
    sha = _mac(src_mac)
    header = dst + sha + struct.pack("!H", ETH_P_ARP)
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + ipaddress.IPv4Address(sender_ip).packed
    body += b"\0" * 6 + ipaddress.IPv4Address(target_ip).packed
    return (header + body).ljust(60, b"\0")


@dataclass(frozen=True)
class ArpProbe:
    member_mac: str
    target: str

    def frame(self) -> bytes:
        return arp_frame(1, self.member_mac, "0.0.0.0", self.target)

    def send(self, sock: socket.socket) -> None:
        try:
            sock.send(self.frame())
        except OSError:
            pass  # a member without carrier refuses to transmit; silence marks it dead


def parse_probe_reply(frame: bytes, targets: list[str], own_mac: str | None) -> bool:
    """Is ``frame`` an ARP reply from one of ``targets`` to this member's probe?"""
    if own_mac is None or len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return False
    op = struct.unpack("!H", frame[20:22])[0]
    sender_ip = str(ipaddress.IPv4Address(frame[28:32]))
    return op == 2 and sender_ip in targets and _mac_text(frame[32:38]) == own_mac.lower()


class MemberSocket:
    """An ARP-only ``AF_PACKET`` socket on one member that skips its own outgoing frames."""

    def __init__(self, member: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        program = (ctypes.c_ubyte * (8 * len(_ARP_ONLY)))()
        for i, (code, jt, jf, k) in enumerate(_ARP_ONLY):
            struct.pack_into("HBBI", program, i * 8, code, jt, jf, k)
        self._program = program  # keep the buffer alive while the kernel copies it
        fprog = struct.pack("HL", len(_ARP_ONLY), ctypes.addressof(program))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self.sock.bind((member, ETH_P_ALL))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> int:
        return self.sock.send(frame)

    def recv(self, size: int) -> bytes:
        try:
            data, address = self.sock.recvfrom(size)
        except BlockingIOError:
            return b""
        return b"" if address[2] == PACKET_OUTGOING else data

    def close(self) -> None:
        self.sock.close()


def _bridge_macs(ipr: Any, team_index: int, bridge_index: int) -> list[str]:
    """MACs the team's bridge learned on its other ports (guests behind the team)."""
    macs = []
    for entry in ipr.get_neighbours(family=AF_BRIDGE):
        if entry.get("NDA_MASTER") != bridge_index or entry["ifindex"] == team_index:
            continue
        if entry["state"] & NUD_PERMANENT:
            continue
        mac = entry.get("NDA_LLADDR")
        if mac and mac not in macs:
            macs.append(mac)
    return macs[:MAX_ANNOUNCED_MACS]


class Announcer:
    """The frames to send after a failover, refreshed off the failover path.

    ``refresh`` reads the team's addresses and the MACs behind its bridge (netlink
    dumps take milliseconds); ``send`` only writes the cached frames, on a socket per
    member opened in advance.
    """

    def __init__(self, team: str, members: tuple[str, ...]) -> None:
        self.team = team
        self.frames: list[bytes] = []
        self.sockets: dict[str, socket.socket] = {}
        for member in members:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only
            try:
                sock.bind((member, 0))
            except OSError:
                sock.close()
                continue
            self.sockets[member] = sock

    def refresh(self, ipr: Any) -> None:
        found = ipr.link_lookup(ifname=self.team)
        if not found:
            self.frames = []
            return
        link = ipr.get_links(found[0])[0]
        team_mac = link.get("IFLA_ADDRESS")
        frames = []
        for addr in ipr.get_addr(index=found[0], family=socket.AF_INET):
            ip = addr.get("IFA_LOCAL") or addr.get("IFA_ADDRESS")
            frames.append(arp_frame(1, team_mac, ip, ip))
        if not frames:
            # No address: any broadcast frame from the team MAC teaches the switch the port.
            frames.append(BROADCAST + _mac(team_mac) + struct.pack("!H", ETH_P_RARP) + b"\0" * 46)
        master = link.get("IFLA_MASTER")
        if master:
            for mac in _bridge_macs(ipr, found[0], master):
                frames.append(BROADCAST + _mac(mac) + struct.pack("!H", ETH_P_RARP) + b"\0" * 46)
        self.frames = frames

    def send(self, member: str) -> int:
        """Send the cached frames out of ``member``; how many went out."""
        sock = self.sockets.get(member)
        sent = 0
        for frame in self.frames if sock is not None else []:
            try:
                sock.send(frame)  # type: ignore[union-attr]
            except OSError:
                break
            sent += 1
        return sent

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


# ------------------------------------------------------------------ link events

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFLA_IFNAME = 3
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class LinkEvent:
    name: str
    index: int
    carrier: bool
    deleted: bool


def parse_link_events(data: bytes) -> list[LinkEvent]:
    """Decode every RTM_NEWLINK/RTM_DELLINK message in one netlink datagram."""
    events = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            body = offset + _NLMSGHDR.size
            _, _, index, flags, _ = _IFINFOMSG.unpack_from(data, body)
            name = ""
            attr = body + _IFINFOMSG.size
            while attr + _RTATTR.size <= offset + length:
                attr_len, attr_type = _RTATTR.unpack_from(data, attr)
                if attr_len < _RTATTR.size:
                    break
                if attr_type == IFLA_IFNAME:
                    name = data[attr + _RTATTR.size : attr + attr_len].split(b"\0", 1)[0].decode()
                attr += (attr_len + 3) & ~3
            deleted = kind == RTM_DELLINK
            carrier = not deleted and bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
            events.append(LinkEvent(name=name, index=index, carrier=carrier, deleted=deleted))
        offset += (length + 3) & ~3
    return events


class LinkWatcher:
    """Link events of the current network namespace (open it after joining the namespace)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        while True:
            try:
                events += parse_link_events(self.sock.recv(1 << 16))
            except BlockingIOError:
                return events
            except OSError:  # ENOBUFS: events were lost; the next miimon poll re-reads carrier
                return events

    def close(self) -> None:
        self.sock.close()


class LinkPoller:
    """Carrier of every link in the current namespace, by one RTM_GETLINK dump.

    The miimon pass reads carrier this way ten times a second; a pyroute2 ``get_links``
    per member cost the daemon ~3 % of a core at miimon 100 ms.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(1.0)
        self.seq = 0

    def carriers(self) -> dict[str, bool]:
        self.seq += 1
        body = _IFINFOMSG.pack(0, 0, 0, 0, 0)
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0) + body)
        found: dict[str, bool] = {}
        while True:
            data = self.sock.recv(1 << 16)
            for event in parse_link_events(data):
                found[event.name] = event.carrier
            if _has_done(data):
                return found

    def close(self) -> None:
        self.sock.close()


def _has_done(data: bytes) -> bool:
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if kind == NLMSG_DONE:
            return True
        if length < _NLMSGHDR.size:
            return True  # malformed: stop rather than spin
        offset += (length + 3) & ~3
    return False
