"""Network plumbing for process guests: a namespace per guest and veth vNICs into it (pyroute2).

Role: create/remove the guest's network namespace (``nonstop-<cluster>-g-<guest>``), and plug a
veth pair per vNIC: the host end (``nsg<id><index>``, ≤ 15 chars) lives in the host's namespace
and joins the host's virtual switch (a Linux bridge) when the vNIC names one; the guest end is
``eth<index>`` inside the guest namespace with the vNIC's MAC, address and (first vNIC) default
route. A vNIC bandwidth becomes a tbf qdisc on both ends (each shapes its egress).

Must not: shell out to ``ip``, create bridges (the host's switch belongs to the lab network code),
or touch interfaces it did not name. This is the process driver's own helper; the lab network
module's ``create_vnic`` can replace it once both agree on naming.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from nonstop.core.guests.model import VnicDefinition, short_id

NETNS_DIR = Path("/var/run/netns")
TBF_LATENCY_MS = 50


class VnicError(Exception):
    pass


def netns_name(cluster: str, guest: str) -> str:
    return f"nonstop-{cluster}-g-{guest}"


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def host_ifname(cluster: str, guest: str, index: int) -> str:
    return f"nsg{short_id(cluster, guest, length=9)}{index:x}"[:15]


def create_netns(name: str) -> None:
    """A fresh namespace: leftovers of a crashed run under the same name are dropped first."""
    remove_netns(name)
    netns.create(name)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def remove_netns(name: str) -> None:
    """Removing the namespace also deletes the guest ends of its veths, and so their host ends."""
    if (NETNS_DIR / name).exists():
        with contextlib.suppress(FileNotFoundError, OSError):
            netns.remove(name)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _ipr(host_netns: str | None) -> IPRoute:
    return IPRoute(netns=host_netns) if host_netns else IPRoute()


def _shape(ipr: IPRoute, index: int, bandwidth: int) -> None:
    rate = max(bandwidth // 8, 1000)  # bytes/s
    burst = max(rate // 100, 16 * 1024)  # ~10 ms of traffic, at least a few MTUs
    ipr.tc("add", "tbf", index, handle="1:", rate=rate, burst=burst, latency=TBF_LATENCY_MS * 1000)


def plug_vnic(host_netns: str | None, guest_netns: str, ifname: str, index: int, vnic: VnicDefinition) -> None:
    """Create the veth pair for vNIC ``index``; on failure nothing of it is left behind."""
    guest_if = f"eth{index}"
    try:
        with _ipr(host_netns) as host:
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
        with IPRoute(netns=guest_netns) as guest:
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
    except (NetlinkError, OSError, IndexError, ValueError) as exc:
        unplug_vnic(host_netns, ifname)
        raise VnicError(f"cannot plug vNIC {index} ({vnic.network}): {exc}") from exc
    except VnicError:
        unplug_vnic(host_netns, ifname)
        raise


def unplug_vnic(host_netns: str | None, ifname: str) -> None:
    """Delete the host end (the kernel deletes its peer). Succeeds if it is gone."""
    with contextlib.suppress(NetlinkError, OSError), _ipr(host_netns) as host:
        host.link("del", ifname=ifname)
