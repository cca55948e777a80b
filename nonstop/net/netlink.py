"""Links, addresses and shapers through pyroute2, inside a namespace's worker thread.

Role: read the observed state of a namespace (links with kind, master, MAC, admin state,
IPv4 addresses and tbf rate) and carry out link operations decided by the core. Runs on a
``NetnsThread``: the IPRoute socket and the /dev/net/tun handle are opened there, so they
act in that namespace.

Must not: decide anything (the core's converge does) or shell out to ``ip``/``tc``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from pyroute2 import IPRoute

from nonstop.core.net.model import (
    AddAddress,
    CreateLink,
    DeleteAddress,
    DeleteLink,
    ObservedLink,
    Op,
    SetEgressRate,
    SetMac,
    SetMaster,
    SetUp,
)

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TC_H_ROOT = 0xFFFFFFFF


def _kind(msg: object) -> str:
    info = msg.get_attr("IFLA_LINKINFO")  # type: ignore[attr-defined]
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind == "tun":
        return "tap"
    return kind or "device"


def read_links(ipr: IPRoute) -> list[ObservedLink]:
    msgs = ipr.get_links()
    names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in msgs}
    addrs: dict[int, list[str]] = {}
    for a in ipr.get_addr(family=socket.AF_INET):
        addrs.setdefault(a["index"], []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    rates: dict[int, int] = {}
    for q in ipr.get_qdiscs():
        if q.get_attr("TCA_KIND") == "tbf" and q["parent"] == 0xFFFFFFFF:
            opts = q.get_attr("TCA_OPTIONS")
            parms = opts.get_attr("TCA_TBF_PARMS") if opts is not None else None
            if parms is not None:
                rates[q["index"]] = int(parms["rate"])
    out = []
    for m in msgs:
        master = m.get_attr("IFLA_MASTER")
        out.append(
            ObservedLink(
                name=names[m["index"]],
                kind=_kind(m),
                master=names.get(master) if master else None,
                mac=m.get_attr("IFLA_ADDRESS") or "",
                up=bool(m["flags"] & 1),
                addresses=tuple(addrs.get(m["index"], [])),
                egress_rate=rates.get(m["index"]),
            )
        )
    return out


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f'no link "{name}"')
    return int(found[0])


def create_tap(name: str) -> None:
    """A persistent tap in the calling thread's namespace (QEMU attaches with ifname=)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def tbf_burst(rate: int) -> int:
    """Bucket depth for a tbf shaper: 10 ms of traffic, at least 32 KiB (a GSO frame)."""
    return max(rate // 100, 32 * 1024)


def apply_link_op(ipr: IPRoute, op: Op) -> None:
    if isinstance(op, CreateLink):
        if op.kind == "tap":
            create_tap(op.name)
            if op.mac:
                ipr.link("set", index=_index(ipr, op.name), address=op.mac)
            return
        kwargs: dict[str, object] = {"ifname": op.name, "kind": op.kind}
        if op.mac:
            kwargs["address"] = op.mac
        if op.kind == "veth":
            peer: dict[str, object] = {"ifname": op.peer}
            if op.peer_mac:
                peer["address"] = op.peer_mac
            kwargs["peer"] = peer
        ipr.link("add", **kwargs)
    elif isinstance(op, DeleteLink):
        found = ipr.link_lookup(ifname=op.name)
        if found:
            ipr.link("del", index=found[0])
    elif isinstance(op, SetMac):
        ipr.link("set", index=_index(ipr, op.name), address=op.mac)
    elif isinstance(op, SetMaster):
        master = _index(ipr, op.master) if op.master else 0
        ipr.link("set", index=_index(ipr, op.name), master=master)
    elif isinstance(op, SetUp):
        ipr.link("set", index=_index(ipr, op.name), state="up" if op.up else "down")
    elif isinstance(op, AddAddress | DeleteAddress):
        address, prefixlen = op.address.split("/")
        ipr.addr("add" if isinstance(op, AddAddress) else "del", index=_index(ipr, op.name), address=address, prefixlen=int(prefixlen))
    elif isinstance(op, SetEgressRate):
        index = _index(ipr, op.name)
        if op.rate is None:
            has_tbf = any(q.get_attr("TCA_KIND") == "tbf" for q in ipr.get_qdiscs(index=index))
            if has_tbf:
                ipr.tc("del", index=index, parent=TC_H_ROOT)
        else:
            ipr.tc("replace", "tbf", index=index, rate=f"{op.rate * 8}bit", burst=tbf_burst(op.rate), latency="50ms")
    else:
        raise TypeError(f"not a link operation: {op!r}")
