"""Lab test helpers: unique cluster names, a spec builder, guests in their own namespaces,
and a check that nothing of a lab is left behind."""

from __future__ import annotations

import ipaddress
import os
import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from nonstop.core.net.render import gateway_address
from nonstop.core.spec import ClusterSpec, NetworkMode
from nonstop.lab import fabric, names
from nonstop.net import host as host_net
from nonstop.net import netns, nft


def unique_cluster() -> str:
    return "t" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(4))


NETWORKS = [
    {"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1"},
    {"name": "nat0", "mode": "nat", "subnet": "198.19.20.0/24", "gateway": "198.19.20.1",
     "port_forwards": [{"host_port": 8080, "guest": "n-0", "guest_port": 80}]},
    {"name": "iso", "mode": "isolated", "subnet": "198.19.30.0/24"},
]


def make_spec(cluster: str, teamed: bool = True, networks: list[dict[str, object]] | None = None) -> ClusterSpec:
    """host1 teamed (active-backup over eth0/eth1), host2 with two plain NICs."""
    host1: dict[str, object] = {"name": "host1", "cpus": 1, "memory": "1GiB"}
    if teamed:
        host1["teams"] = [{"name": "team0", "members": ["eth0", "eth1"], "primary": "eth0"}]
    return ClusterSpec.model_validate(
        {
            "cluster": cluster,
            "hosts": [host1, {"name": "host2", "cpus": 1, "memory": "1GiB"}],
            "networks": NETWORKS if networks is None else networks,
            "guests": [{"name": "n", "replicas": 1, "nics": [{"network": "nat0"}]}] if networks is None else [],
        }
    )


@dataclass
class Guest:
    name: str
    ns: str
    host: str
    network: str
    address: str


def add_guest(spec: ClusterSpec, host: str, network: str, guest: str, address: str, bandwidth: int | None = None) -> Guest:
    """A process-like guest: its own namespace, a veth vNIC on ``network`` of ``host``."""
    net = spec.network(network)
    ns = f"{names.ns_prefix(spec.cluster)}g-{guest}"
    netns.create(ns)
    vnic = host_net.create_vnic(names.host_ns(spec.cluster, host), spec.cluster, network, guest, 0, "veth", bandwidth)
    assert vnic.peer_name is not None
    gateway = None if net.mode is NetworkMode.ISOLATED else gateway_address(net)
    prefix = ipaddress.ip_network(net.subnet).prefixlen
    host_net.move_to_netns(names.host_ns(spec.cluster, host), vnic.peer_name, ns, address=f"{address}/{prefix}", gateway=gateway)
    return Guest(guest, ns, host, network, address)


def root_snapshot() -> dict[str, object]:
    """What the root namespace has that a lab could have touched."""
    with IPRoute() as ipr:
        links = sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
        routes = sorted(
            f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in ipr.get_routes(family=2) if r.get_attr("RTA_DST")
        )
    return {"links": links, "routes": routes, "tables": sorted(nft.list_tables(None))}


def assert_nothing_left(cluster: str, pids: list[int]) -> None:
    assert netns.list_names(names.ns_prefix(cluster)) == []
    assert not os.path.exists(names.state_dir(cluster))
    assert [p for p in pids if netns.alive(p)] == []


def assert_root_untouched(before: dict[str, object]) -> None:
    after = root_snapshot()
    lab_range = ipaddress.ip_network("198.18.0.0/15")
    new_links = [name for name in after["links"] if name not in before["links"]]  # type: ignore[attr-defined,operator]
    ours = ("nonstop", "nb-", "nu-", "pa-", "pb-", "nt", "nv", "ng", "isl", "c-", "o-", "host", "team", "sw", "eth")
    assert not [name for name in new_links if name.startswith(ours)]
    new_routes = [r for r in after["routes"] if r not in before["routes"]]  # type: ignore[attr-defined,operator]
    assert not [r for r in new_routes if ipaddress.ip_network(r, strict=False).overlaps(lab_range)]
    assert not [t for t in after["tables"] if t not in before["tables"] and t[1].startswith("nonstop_")]  # type: ignore[operator]


@pytest.fixture
def cluster() -> Iterator[str]:
    name = unique_cluster()
    yield name
    fabric.down(name)
