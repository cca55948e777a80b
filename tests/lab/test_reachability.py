"""Reachability matrices for bridged, NAT and isolated networks, with real TCP both ways.

One lab (host1 teamed, host2 plain NICs) with process-like guests in namespaces of
their own, each answering on port 80 with its name and the client address it saw.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from nonstop.core.spec import ClusterSpec
from nonstop.lab import fabric, names
from nonstop.lab.probe import TcpResponder, http_get, tcp_request
from nonstop.net import host as host_net
from nonstop.net import netns

from .conftest import Guest, add_guest, make_spec, unique_cluster

pytestmark = pytest.mark.root

GUESTS = [
    # name, host, network, address
    ("p1", "host1", "prod", "198.18.10.11"),
    ("p2", "host2", "prod", "198.18.10.12"),
    ("n-0", "host1", "nat0", "198.19.20.2"),
    ("n2", "host1", "nat0", "198.19.20.3"),
    ("n3", "host2", "nat0", "198.19.20.4"),
    ("i1", "host1", "iso", "198.19.30.2"),
    ("i2", "host1", "iso", "198.19.30.3"),
    ("i3", "host2", "iso", "198.19.30.4"),
]
H1, H2, OUT, CTL = "198.18.0.10", "198.18.0.11", "198.18.0.254", "198.18.0.1"


class Lab:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.guests: dict[str, Guest] = {}
        self.responders: list[TcpResponder] = []

    def ns(self, who: str) -> str:
        if who in self.guests:
            return self.guests[who].ns
        return f"{names.ns_prefix(self.spec.cluster)}{who}"

    def add(self, name: str, host: str, network: str, address: str) -> None:
        guest = add_guest(self.spec, host, network, name, address)
        self.guests[name] = guest
        self.responders.append(TcpResponder(guest.ns, port=80, name=name))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = make_spec(unique_cluster())
    try:
        fabric.up(spec)
        lab = Lab(spec)
        for guest in GUESTS:
            lab.add(*guest)
        # port forward host1:8080 -> n-0:80 needs n-0's address
        host_net.ensure_host_network(lab.ns("host1"), spec, "host1", {"nat0": {"n-0": "198.19.20.2"}})
        # Give "outside" routes toward the private subnets, as a careless upstream might:
        # the hosts' nftables, not the lack of a route, must keep outsiders away.
        with IPRoute(netns=lab.ns("out")) as ipr:
            ipr.route("replace", dst="198.19.20.0/24", gateway=H1)
            ipr.route("replace", dst="198.19.30.0/24", gateway=H1)
        yield lab
    finally:
        for responder in lab.responders if "lab" in locals() else []:
            responder.close()
        fabric.down(spec.cluster)
        assert netns.list_names(names.ns_prefix(spec.cluster)) == []


def _check(lab: Lab, cases: list[tuple[str, str, int, str | None]], http: bool = False) -> None:
    """Each case: (from, to address, port, expected answer or None); all compared at once."""
    got = []
    for src, address, port, _ in cases:
        timeout = 1.0 if _ is not None else 0.4
        probe = http_get if http else tcp_request
        got.append((src, address, port, probe(lab.ns(src), address, port, timeout=timeout)))
    wrong = [(g, e) for g, e in zip(got, cases, strict=True) if g[3] != e[3]]
    assert not wrong, "\n".join(f"{g[0]} -> {g[1]}:{g[2]} got {g[3]!r}, expected {e[3]!r}" for g, e in wrong)


def test_bridged_matrix(lab: Lab) -> None:
    _check(lab, [
        ("p1", "198.18.10.12", 80, "p2 198.18.10.11"),   # across hosts, both ways
        ("p2", "198.18.10.11", 80, "p1 198.18.10.12"),
        ("out", "198.18.10.11", 80, "p1 198.18.10.1"),    # from the outside
        ("out", "198.18.10.12", 80, "p2 198.18.10.1"),
        ("ctl", "198.18.10.12", 80, f"p2 {CTL}"),          # the controller, routed by out
        ("host2", "198.18.10.11", 80, f"p1 {H2}"),         # a host reaching a guest elsewhere
    ])
    _check(lab, [("p1", "198.18.10.1", 80, "out 198.18.10.11"), ("p2", OUT, 80, "out 198.18.10.12")], http=True)


def test_nat_matrix(lab: Lab) -> None:
    _check(lab, [
        ("n-0", "198.19.20.3", 80, "n2 198.19.20.2"),      # same host, same network: direct
        ("n2", "198.19.20.2", 80, "n-0 198.19.20.3"),
        ("n-0", "198.18.10.12", 80, f"p2 {H1}"),           # out to the world, masqueraded
        ("out", H1, 8080, f"n-0 {OUT}"),                   # a forwarded port
        ("out", "198.19.20.2", 80, None),                  # nothing else gets in, even with a route
        ("out", "198.19.20.3", 80, None),
        ("p1", "198.19.20.2", 80, None),
        ("n3", "198.19.20.2", 80, None),                   # another host's NAT network is another world
        ("n-0", "198.19.20.4", 80, None),
        ("ctl", "198.19.20.2", 80, None),                  # the controller is outside too
    ])
    _check(lab, [("n-0", OUT, 80, f"out {H1}"), ("n3", OUT, 80, f"out {H2}")], http=True)


def test_isolated_matrix(lab: Lab) -> None:
    _check(lab, [
        ("i1", "198.19.30.3", 80, "i2 198.19.30.2"),
        ("i2", "198.19.30.2", 80, "i1 198.19.30.3"),
        ("i1", "198.19.30.4", 80, None),                   # same network, other host
        ("i3", "198.19.30.2", 80, None),
        ("out", "198.19.30.2", 80, None),                  # outside in, even with a route
        ("host1", "198.19.30.2", 80, None),                # not even its own host
        ("ctl", "198.19.30.3", 80, None),
        ("i1", "198.18.10.11", 80, None),                  # no way out
        ("i1", "198.19.20.2", 80, None),
    ])
    _check(lab, [("i1", OUT, 80, None)], http=True)


def test_bridged_guest_keeps_its_address_when_moved(lab: Lab) -> None:
    spec = lab.spec
    assert tcp_request(lab.ns("out"), "198.18.10.11", 80) == "p1 198.18.10.1"
    # p1 moves from host1 to host2: same MAC (derived from cluster/guest/index), same address
    old_mac = host_net.create_vnic(lab.ns("host1"), spec.cluster, "prod", "p1", 0, "veth").mac
    host_net.delete_vnic(lab.ns("host1"), spec.cluster, "p1", 0, "veth")
    netns.delete(lab.guests["p1"].ns)
    assert tcp_request(lab.ns("out"), "198.18.10.11", 80, timeout=0.3) is None
    moved = add_guest(spec, "host2", "prod", "p1", "198.18.10.11")
    lab.responders.append(TcpResponder(moved.ns, port=80, name="p1-moved"))
    assert host_net.create_vnic(lab.ns("host2"), spec.cluster, "prod", "p1", 0, "veth").mac == old_mac
    host_net.announce(moved.ns, "eth0", moved.address)
    assert tcp_request(lab.ns("out"), "198.18.10.11", 80) == "p1-moved 198.18.10.1"
    assert tcp_request(lab.ns("p2"), "198.18.10.11", 80) == "p1-moved 198.18.10.12"
