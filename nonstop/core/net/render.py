"""The renderer: a cluster spec and one host -> the desired network state of that host.

Role: decide, as data, what a host's network looks like: one bridge per network
(``nb-<net>``); for bridged networks an uplink bridge (``nu-<uplink>``) that the uplink (a
team or a NIC) joins, patched to each bridged network's bridge with a veth pair, so several
bridged networks can share one uplink and the host's own addresses live on the uplink
bridge; for NAT networks the gateway address on the bridge, ``ip_forward`` and an
nftables table ``nonstop_nat_<net>``; isolated networks get a bare bridge. Also renders one
guest vNIC (tap or veth, deterministic MAC, optional bandwidth limit in both directions).

Must not: read the kernel, allocate addresses (IPAM does, the caller passes the result)
or decide where host management addresses come from (the lab or the installer does;
``uplink_device`` tells them which device carries them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nonstop.core.net import names
from nonstop.core.net.model import DesiredState, LinkSpec, NftTable
from nonstop.core.net.nftables import nat_table, policing_table
from nonstop.core.spec import ClusterSpec, HostSpec, NetworkMode, NetworkSpec

IP_FORWARD = ("net/ipv4/ip_forward", "1")


def network_uplink(host: HostSpec, network: NetworkSpec) -> str:
    """The uplink (team or NIC) a bridged or NAT network uses on ``host``."""
    return network.uplink or host.uplink_names()[0]


def bridged_uplinks(spec: ClusterSpec, host: HostSpec) -> list[str]:
    seen: list[str] = []
    for net in spec.networks:
        if net.mode is NetworkMode.BRIDGED:
            uplink = network_uplink(host, net)
            if uplink not in seen:
                seen.append(uplink)
    return seen


def uplink_device(spec: ClusterSpec, host: HostSpec, uplink: str) -> str:
    """The device that carries the host's own addresses for ``uplink``: the uplink bridge
    when bridged networks use that uplink (a bridge port cannot hold addresses), else the
    uplink itself."""
    return names.uplink_bridge_name(uplink) if uplink in bridged_uplinks(spec, host) else uplink


def gateway_address(network: NetworkSpec) -> str:
    """The network's gateway: the spec's, else the subnet's first host address."""
    if network.gateway is not None:
        return network.gateway
    return str(next(iter(network.network().hosts())))


def gateway_cidr(network: NetworkSpec) -> str:
    return f"{gateway_address(network)}/{network.network().prefixlen}"


def _bridge_mac(spec: ClusterSpec, host: HostSpec, bridge: str) -> str:
    # A fixed bridge MAC: otherwise the kernel takes the lowest port MAC, which changes as
    # guests come and go and leaves stale gateway entries in guests' ARP caches.
    return names.vnic_mac(spec.cluster, f"host:{host.name}:{bridge}", 0)


def render_host_network(
    spec: ClusterSpec,
    host: HostSpec,
    guest_addresses: Mapping[str, Mapping[str, str]] | None = None,
) -> DesiredState:
    """Desired state of ``host``'s virtual switches. ``guest_addresses``: network -> guest ->
    IPv4 address, needed only to render NAT port forwards (a forward whose guest has no
    address yet is left out until it has one)."""
    addresses = guest_addresses or {}
    links: list[LinkSpec] = []
    tables: list[NftTable] = []
    sysctls: list[tuple[str, str]] = []
    for uplink in bridged_uplinks(spec, host):
        ubr = names.uplink_bridge_name(uplink)
        links.append(LinkSpec(ubr, "bridge", mac=_bridge_mac(spec, host, ubr), manage_addresses=False))
        links.append(LinkSpec(uplink, "external", master=ubr))
    for net in spec.networks:
        bridge = names.bridge_name(net.name)
        if net.mode is NetworkMode.NAT:
            links.append(LinkSpec(bridge, "bridge", mac=_bridge_mac(spec, host, bridge), addresses=(gateway_cidr(net),)))
            forwards = tuple(
                (pf.protocol, pf.host_port, addresses[net.name][pf.guest], pf.guest_port)
                for pf in net.port_forwards
                if pf.guest in addresses.get(net.name, {})
            )
            device = uplink_device(spec, host, network_uplink(host, net))
            tables.append(nat_table(names.nat_table_name(net.name), bridge, net.subnet, device, forwards))
            if IP_FORWARD not in sysctls:
                sysctls.append(IP_FORWARD)
        else:
            links.append(LinkSpec(bridge, "bridge", mac=_bridge_mac(spec, host, bridge)))
        if net.mode is NetworkMode.BRIDGED:
            ubr = names.uplink_bridge_name(network_uplink(host, net))
            net_end, uplink_end = names.patch_names(net.name)
            links.append(LinkSpec(net_end, "veth", peer=uplink_end, master=bridge))
            links.append(LinkSpec(uplink_end, "veth", peer=net_end, master=ubr))
    return DesiredState(
        links=tuple(links),
        tables=tuple(tables),
        sysctls=tuple(sysctls),
        owned_link_prefixes=names.OWNED_LINK_PREFIXES,
        owned_table_prefixes=(names.NAT_TABLE_PREFIX,),
    )


@dataclass(frozen=True)
class VnicPlan:
    """One guest vNIC: its devices, the guest's MAC and the desired state to converge."""

    device: str
    peer: str | None
    mac: str
    desired: DesiredState


def render_vnic(
    cluster: str, network: str, guest: str, index: int, kind: str, bandwidth: int | None = None
) -> VnicPlan:
    """A vNIC on ``network``'s bridge. ``bandwidth`` (bits/s, like the spec's ``Rate``, e.g.
    ``VnicSpec.bandwidth``) limits both directions: tbf on
    the host-side device's egress (toward the guest), nftables policing on its ingress
    (from the guest). The guest's MAC goes to the guest end (veth) or to QEMU (tap); the
    tap itself keeps a kernel MAC so the bridge never mistakes the guest's MAC for local."""
    device, peer = names.vnic_names(cluster, guest, index, kind)
    rate = max(bandwidth // 8, 1) if bandwidth else None  # the kernel counts bytes
    mac = names.vnic_mac(cluster, guest, index)
    link = LinkSpec(
        name=device,
        kind="tap" if kind == "tap" else "veth",
        peer=peer,
        peer_mac=mac if peer is not None else None,
        master=names.bridge_name(network),
        egress_rate=rate,
    )
    tables = (policing_table(names.bandwidth_table_name(device), device, rate),) if rate else ()
    return VnicPlan(device=device, peer=peer, mac=mac, desired=DesiredState(links=(link,), tables=tables))
