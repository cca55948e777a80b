"""Idempotent netlink helpers for building the lab's emulated hardware.

Role: ensure a bridge, a cable (a veth pair whose ends may sit in two namespaces), an
address, a default route, a link's admin state, and per-namespace sysctls -- each a no-op
when already true, each repairing a half-made object (a cable with one end missing is
made again). Everything goes through pyroute2 inside the named namespace.

Must not: know the lab's layout (nonstop.lab.fabric does) or configure the root namespace.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from nonstop.net import netns

IFF_UP = 0x1


def _lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def ensure_bridge(ns: str, name: str) -> None:
    with netns.iproute(ns) as ipr:
        if _lookup(ipr, name) is None:
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
        ipr.link("set", index=_lookup(ipr, name), state="up")


def ensure_cable(ns_a: str, end_a: str, ns_b: str, end_b: str, master_a: str | None = None, mac_b: str | None = None) -> None:
    """A veth pair: ``end_a`` in ``ns_a`` (optionally a port of bridge ``master_a``) and
    ``end_b`` in ``ns_b``; both up. Recreated when one end is missing."""
    with netns.iproute(ns_a) as a, netns.iproute(ns_b) as b:
        index_a, index_b = _lookup(a, end_a), _lookup(b, end_b)
        if (index_a is None) != (index_b is None):
            for ipr, index in ((a, index_a), (b, index_b)):
                if index is not None:
                    ipr.link("del", index=index)
            index_a = index_b = None
        if index_a is None:
            peer: dict[str, object] = {"ifname": end_b, "net_ns_fd": ns_b}
            if mac_b:
                peer["address"] = mac_b
            a.link("add", ifname=end_a, kind="veth", peer=peer)
            index_a, index_b = _lookup(a, end_a), _lookup(b, end_b)
        if master_a is not None:
            a.link("set", index=index_a, master=_lookup(a, master_a))
        a.link("set", index=index_a, state="up")
        b.link("set", index=index_b, state="up")


def set_master(ns: str, name: str, master: str) -> None:
    with netns.iproute(ns) as ipr:
        ipr.link("set", index=_lookup(ipr, name), master=_lookup(ipr, master))


def set_state(ns: str, name: str, up: bool) -> bool:
    """Set ``name`` up or down; False when the link does not exist."""
    with netns.iproute(ns) as ipr:
        index = _lookup(ipr, name)
        if index is None:
            return False
        ipr.link("set", index=index, state="up" if up else "down")
        return True


def link_state(ns: str, name: str) -> dict[str, object] | None:
    with netns.iproute(ns) as ipr:
        index = _lookup(ipr, name)
        if index is None:
            return None
        msg = ipr.get_links(index)[0]
        return {"up": bool(msg["flags"] & IFF_UP), "carrier": bool(msg.get_attr("IFLA_CARRIER"))}


def ensure_up(ns: str, name: str) -> None:
    set_state(ns, name, True)


def ensure_address(ns: str, device: str, cidr: str) -> None:
    address, prefixlen = cidr.split("/")
    with netns.iproute(ns) as ipr:
        index = _lookup(ipr, device)
        if index is None:
            raise LookupError(f'no link "{device}" in {ns}')
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
        if address not in have:
            ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))


def ensure_default_route(ns: str, gateway: str) -> None:
    with netns.iproute(ns) as ipr:
        ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)


def set_sysctls(ns: str, values: dict[str, str]) -> None:
    with netns.NetnsThread(ns) as thread:
        for path, value in values.items():
            thread.call(netns.write_sysctl, path, value)


ARP_SYSCTLS = {
    # One L2 domain, several addresses per namespace: answer ARP only on the interface
    # that holds the address, and announce the source address of the outgoing interface.
    "net/ipv4/conf/all/arp_ignore": "1",
    "net/ipv4/conf/default/arp_ignore": "1",
    "net/ipv4/conf/all/arp_announce": "2",
    "net/ipv4/conf/default/arp_announce": "2",
}
