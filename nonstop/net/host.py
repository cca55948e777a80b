"""Host virtual networking: the stable API the agent and the guest drivers call.

Role: make a host's virtual switches match the cluster spec (``ensure_host_network``),
plug guests into them (``create_vnic`` / ``delete_vnic``), and hand a process guest its
end of a veth (``move_to_netns``). Each call renders desired state with the pure core,
then converges the namespace (see nonstop.net.apply), so every call is idempotent and
repairs partial state left by a crash. Documented in docs/networking.md.

Must not: allocate addresses (nonstop.net.ipam_store does), create the host's NICs or
teams (the lab fabric / the teaming code does), or touch links it does not own.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from nonstop.core.net import names
from nonstop.core.net.model import Op
from nonstop.core.net.render import render_host_network, render_vnic
from nonstop.core.spec import ClusterSpec, HostSpec
from nonstop.net import apply, netns, nft


class NetworkNotReadyError(RuntimeError):
    """The network's bridge does not exist on this host: call ensure_host_network first."""


@dataclass(frozen=True)
class VnicInfo:
    name: str
    """Host-side device: the tap QEMU opens (``-netdev tap,ifname=<name>``) or the veth's host end."""
    mac: str
    """The guest's MAC: give it to QEMU (``-device virtio-net-pci,mac=<mac>``); a veth's guest end has it already."""
    peer_name: str | None
    """veth only: the guest end, still in the host namespace until ``move_to_netns``."""
    bridge: str


def ensure_host_network(
    netns_name: str,
    spec: ClusterSpec,
    host: HostSpec | str,
    guest_addresses: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[Op, ...]:
    """Converge ``host``'s bridges, patches, NAT tables and sysctls to the spec; returns the
    operations executed (empty when nothing had to change). The host's uplinks (its NICs
    and teams) must exist. ``guest_addresses`` (network -> guest -> address) feeds NAT port
    forwards."""
    host_spec = spec.host(host) if isinstance(host, str) else host
    return apply.apply(netns_name, render_host_network(spec, host_spec, guest_addresses))


def host_network_plan(
    netns_name: str, spec: ClusterSpec, host: HostSpec | str, guest_addresses: Mapping[str, Mapping[str, str]] | None = None
) -> tuple[Op, ...]:
    """What ``ensure_host_network`` would do now (dry run)."""
    host_spec = spec.host(host) if isinstance(host, str) else host
    return apply.plan(netns_name, render_host_network(spec, host_spec, guest_addresses))


def _bridge_exists(netns_name: str, bridge: str) -> bool:
    with netns.iproute(netns_name) as ipr:
        return bool(ipr.link_lookup(ifname=bridge))


def create_vnic(
    netns_name: str,
    cluster: str,
    network: str,
    guest: str,
    index: int,
    kind: str = "tap",
    bandwidth: int | None = None,
) -> VnicInfo:
    """Create (or repair) guest ``guest``'s vNIC number ``index`` on ``network``'s bridge.

    ``kind``: "tap" for QEMU guests, "veth" for process guests. ``bandwidth``: bits per
    second in each direction (the spec's ``VnicSpec.bandwidth``), or None. Idempotent: calling again with the same arguments
    changes nothing; with another bandwidth, updates the limits in place."""
    plan = render_vnic(cluster, network, guest, index, kind, bandwidth)
    bridge = names.bridge_name(network)
    if not _bridge_exists(netns_name, bridge):
        raise NetworkNotReadyError(f'bridge "{bridge}" of network {network} does not exist in {netns_name}')
    apply.apply(netns_name, plan.desired)
    if not bandwidth:
        table = names.bandwidth_table_name(plan.device)
        if ("netdev", table) in nft.list_tables(netns_name):
            nft.delete(netns_name, "netdev", table)
    if plan.peer is not None:
        with netns.iproute(netns_name) as ipr:
            found = ipr.link_lookup(ifname=plan.peer)
            if found:
                ipr.link("set", index=found[0], state="up")
    return VnicInfo(name=plan.device, mac=plan.mac, peer_name=plan.peer, bridge=bridge)


def delete_vnic(netns_name: str, cluster: str, guest: str, index: int, kind: str = "tap") -> bool:
    """Remove the vNIC and its policing table; True if something was removed. Succeeds when
    it is already gone (and when the namespace itself is gone)."""
    device, _ = names.vnic_names(cluster, guest, index, kind)
    if not netns.exists(netns_name):
        return False
    removed = False
    table = names.bandwidth_table_name(device)
    if ("netdev", table) in nft.list_tables(netns_name):
        nft.delete(netns_name, "netdev", table)
        removed = True
    with netns.iproute(netns_name) as ipr:
        found = ipr.link_lookup(ifname=device)
        if found:
            ipr.link("del", index=found[0])
            removed = True
    return removed


def move_to_netns(
    netns_name: str,
    peer: str,
    target_netns: str,
    ifname: str = "eth0",
    address: str | None = None,
    gateway: str | None = None,
) -> None:
    """Move a veth's guest end ``peer`` from ``netns_name`` into the guest's namespace
    ``target_netns`` (which its driver created), rename it ``ifname``, give it ``address``
    (CIDR, e.g. "198.18.10.5/24"), bring it and ``lo`` up, and add a default route via
    ``gateway``. Idempotent: when ``ifname`` already sits in the target, only the address,
    state and route are ensured."""
    with netns.iproute(target_netns) as target:
        already = target.link_lookup(ifname=ifname)
    if not already:
        with netns.iproute(netns_name) as ipr:
            found = ipr.link_lookup(ifname=peer)
            if not found:
                raise LookupError(f'no link "{peer}" in {netns_name}')
            ipr.link("set", index=found[0], net_ns_fd=target_netns)
    with netns.iproute(target_netns) as target:
        index = (target.link_lookup(ifname=ifname) or target.link_lookup(ifname=peer))[0]
        target.link("set", index=index, ifname=ifname)
        if address is not None:
            ip, prefixlen = address.split("/")
            have = {a.get_attr("IFA_ADDRESS") for a in target.get_addr(index=index)}
            if ip not in have:
                target.addr("add", index=index, address=ip, prefixlen=int(prefixlen))
        target.link("set", index=index, state="up")
        for lo in target.link_lookup(ifname="lo"):
            target.link("set", index=lo, state="up")
        if gateway is not None:
            target.route("replace", dst="0.0.0.0/0", gateway=gateway)


def announce(netns_name: str, ifname: str, address: str, count: int = 1) -> None:
    """Send ``count`` gratuitous ARP frames for ``address`` out of ``ifname`` inside
    ``netns_name`` (a guest's namespace), so switches relearn where its MAC now is and
    neighbours refresh their caches -- what QEMU's announce does after a migration. Call it
    after a guest moved to another host."""
    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            mac = sock.getsockname()[4]
            ip = socket.inet_aton(address.split("/")[0])
            broadcast = b"\xff" * 6
            arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, broadcast, ip)
            for _ in range(count):
                sock.send(broadcast + mac + b"\x08\x06" + arp)

    with netns.NetnsThread(netns_name) as thread:
        thread.call(send)
