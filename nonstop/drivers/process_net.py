"""Network plumbing for process guests: a namespace per guest and veth vNICs into it (pyroute2).

Role: create/remove the guest's network namespace (``nonstop-<cluster>-g-<guest>``), and plug a
veth pair per vNIC: the host end (``nsg<id><index>``, ≤ 15 chars) lives in the host's namespace
and joins the host's virtual switch (a Linux bridge) when the vNIC names one; the guest end is
``eth<index>`` inside the guest namespace with the vNIC's MAC, address and (first vNIC) default
route. A vNIC bandwidth becomes a tbf qdisc on both ends (each shapes its egress).

Two ways to plug, chosen per vNIC by ``vnic_plan``:
- **lab network** (``nonstop.net.host``): when the vNIC names no bridge and the host namespace is
  known, the network's own bridge (``nb-<network>``) is used through ``create_vnic(kind="veth")`` +
  ``move_to_netns``, so bandwidth policing and naming (``nv<hash>``) are the lab network's;
- **own**: a veth onto the bridge the vNIC names explicitly (or onto nothing), shaped with tbf.

Must not: shell out to ``ip``, create bridges (the host's switch belongs to the lab network code),
or touch interfaces it did not name.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nonstop.core.guests.model import VnicDefinition, short_id
from nonstop.core.net import names as net_names
from nonstop.net import netns
from nonstop.net.netns import netns_path as netns_path  # the launcher's --netns argument

T = TypeVar("T")

TBF_LATENCY_MS = 50


class VnicError(Exception):
    pass


def netns_name(cluster: str, guest: str) -> str:
    return f"nonstop-{cluster}-g-{guest}"


def host_ifname(cluster: str, guest: str, index: int) -> str:
    return f"nsg{short_id(cluster, guest, length=9)}{index:x}"[:15]


def uses_lab_network(host_netns: str | None, vnic: VnicDefinition) -> bool:
    return vnic.bridge is None and host_netns is not None


def vnic_plan(host_netns: str | None, cluster: str, guest: str, index: int, vnic: VnicDefinition) -> str:
    """The host-side interface name this vNIC will have (pinned in the definition at create)."""
    if uses_lab_network(host_netns, vnic):
        return net_names.vnic_names(cluster, guest, index, "veth")[0]
    return host_ifname(cluster, guest, index)


def plug(host_netns: str | None, cluster: str, guest: str, guest_netns: str, index: int, vnic: VnicDefinition) -> None:
    """Plug vNIC ``index`` by whichever way ``vnic_plan`` chose; on failure nothing of it is left."""
    ifname = vnic.host_ifname or vnic_plan(host_netns, cluster, guest, index, vnic)
    if not ifname.startswith(net_names.VETH_HOST_PREFIX) or host_netns is None:
        plug_vnic(host_netns, guest_netns, ifname, index, vnic)
        return
    from nonstop.net import host as lab_host  # the lab network module (nonstop/net/host.py)

    try:
        info = lab_host.create_vnic(host_netns, cluster, vnic.network, guest, index, kind="veth",
                                    bandwidth=vnic.bandwidth)
        if info.peer_name is None:
            raise VnicError("the lab network returned no guest end for a veth")
        lab_host.move_to_netns(host_netns, info.peer_name, guest_netns, f"eth{index}", vnic.address,
                               vnic.gateway if index == 0 else None)
        def set_mac(ipr: IPRoute) -> None:
            gi = ipr.link_lookup(ifname=f"eth{index}")[0]
            ipr.link("set", index=gi, state="down")
            ipr.link("set", index=gi, address=vnic.mac)
            ipr.link("set", index=gi, state="up")
            if index == 0 and vnic.gateway:
                # setting the link down dropped the default route move_to_netns added
                ipr.route("replace", dst="0.0.0.0/0", gateway=vnic.gateway, oif=gi)

        in_netns(guest_netns, set_mac)
        if vnic.address:
            # A guest restarted on another host keeps its address and MAC: tell the switches at
            # once (gratuitous ARP), or they keep sending its traffic to the old host's port.
            lab_host.announce(guest_netns, f"eth{index}", vnic.address, count=2)
    except (lab_host.NetworkNotReadyError, LookupError, NetlinkError, OSError, IndexError, ValueError) as exc:
        unplug(host_netns, cluster, guest, index, ifname)
        raise VnicError(f"cannot plug vNIC {index} ({vnic.network}): {exc}") from exc


def unplug(host_netns: str | None, cluster: str, guest: str, index: int, ifname: str) -> None:
    """Remove the vNIC (and the lab network's policing table for it). Succeeds if it is gone."""
    unplug_vnic(host_netns, ifname)
    if host_netns is not None and ifname.startswith(net_names.VETH_HOST_PREFIX):
        from nonstop.net import host as lab_host

        with contextlib.suppress(NetlinkError, OSError, LookupError):
            lab_host.delete_vnic(host_netns, cluster, guest, index, kind="veth")


def create_netns(name: str) -> None:
    """A fresh namespace: leftovers of a crashed run under the same name are dropped first."""
    remove_netns(name)
    netns.create(name)
    in_netns(name, lambda ipr: ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up"))


def remove_netns(name: str) -> None:
    """Removing the namespace also deletes the guest ends of its veths, and so their host ends."""
    with contextlib.suppress(FileNotFoundError, OSError):
        netns.delete(name)


def _with_iproute(fn: Callable[[IPRoute], T]) -> T:
    with IPRoute() as ipr:
        return fn(ipr)


def in_netns(name: str | None, fn: Callable[[IPRoute], T]) -> T:
    """Run ``fn(ipr)`` with a netlink socket in namespace ``name`` (None: ours). The socket is opened
    by a thread that entered the namespace — several times cheaper than ``IPRoute(netns=...)``, which
    forks a helper process, and that matters for start latency on a loaded host."""
    if name is None:
        return _with_iproute(fn)
    result: T = netns.call(name, _with_iproute, fn)
    return result


def _shape(ipr: IPRoute, index: int, bandwidth: int) -> None:
    rate = max(bandwidth // 8, 1000)  # bytes/s
    burst = max(rate // 100, 16 * 1024)  # ~10 ms of traffic, at least a few MTUs
    ipr.tc("add", "tbf", index, handle="1:", rate=rate, burst=burst, latency=TBF_LATENCY_MS * 1000)


def plug_vnic(host_netns: str | None, guest_netns: str, ifname: str, index: int, vnic: VnicDefinition) -> None:
    """Create the veth pair for vNIC ``index``; on failure nothing of it is left behind."""
    guest_if = f"eth{index}"

    def host_side(host: IPRoute) -> None:
        with contextlib.suppress(NetlinkError):
            host.link("del", ifname=ifname)
        host.link("add", ifname=ifname, kind="veth", peer={"ifname": guest_if, "net_ns_fd": guest_netns})
        host_index = host.link_lookup(ifname=ifname)[0]
        if vnic.bridge:
            found = host.link_lookup(ifname=vnic.bridge)
            if not found:
                raise VnicError(f"virtual switch {vnic.bridge} does not exist on this host")
            host.link("set", index=host_index, master=found[0])
        host.link("set", index=host_index, state="up")
        if vnic.bandwidth:
            _shape(host, host_index, vnic.bandwidth)

    def guest_side(guest: IPRoute) -> None:
        gi = guest.link_lookup(ifname=guest_if)[0]
        guest.link("set", index=gi, address=vnic.mac)
        if vnic.address:
            iface = ipaddress.ip_interface(vnic.address)
            guest.addr("add", index=gi, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        guest.link("set", index=gi, state="up")
        if vnic.bandwidth:
            _shape(guest, gi, vnic.bandwidth)
        if vnic.gateway and index == 0:
            guest.route("add", dst="0.0.0.0/0", gateway=vnic.gateway)

    try:
        in_netns(host_netns, host_side)
        in_netns(guest_netns, guest_side)
    except (NetlinkError, OSError, IndexError, ValueError) as exc:
        unplug_vnic(host_netns, ifname)
        raise VnicError(f"cannot plug vNIC {index} ({vnic.network}): {exc}") from exc
    except VnicError:
        unplug_vnic(host_netns, ifname)
        raise


def unplug_vnic(host_netns: str | None, ifname: str) -> None:
    """Delete the host end (the kernel deletes its peer). Succeeds if it is gone."""
    with contextlib.suppress(NetlinkError, OSError):
        in_netns(host_netns, lambda host: host.link("del", ifname=ifname))
