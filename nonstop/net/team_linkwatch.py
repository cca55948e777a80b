"""Carrier changes as they happen: a plain rtnetlink socket subscribed to link events.

Role: tell the team daemon within a millisecond that a member NIC gained or lost
carrier. A raw ``AF_NETLINK`` socket bound to ``RTMGRP_LINK`` is read directly: pyroute2
0.9's sync ``IPRoute`` buffers event messages inside its own event loop whenever another
``IPRoute`` of the process is used, so ``select`` on its descriptor missed events for
hundreds of milliseconds (measured here: 80-600 ms). Only the netlink header, the
``ifinfomsg`` flags and ``IFLA_IFNAME`` are decoded.

Must NOT: send anything to the kernel or decide what a carrier change means.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
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
