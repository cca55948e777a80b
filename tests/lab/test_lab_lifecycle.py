"""Lab up/down: builds what the spec says, is idempotent, recovers from a crash, leaves nothing."""

from __future__ import annotations

import time

import pytest
from pyroute2 import IPRoute

from nonstop.core.spec import ClusterSpec
from nonstop.lab import fabric, faults, names, state, wiring
from nonstop.lab.probe import http_get, tcp_request
from nonstop.net import netns, nft

from .conftest import assert_nothing_left, assert_root_untouched, make_spec, root_snapshot

pytestmark = pytest.mark.root


def _links(ns: str) -> set[str]:
    with IPRoute(netns=ns) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_up_builds_the_fabric_and_down_leaves_nothing(cluster: str) -> None:
    before = root_snapshot()
    spec = make_spec(cluster)
    lab = fabric.up(spec)
    pids = list(lab.processes.values())
    assert set(names.all_namespaces(spec)) <= set(netns.list_names(names.ns_prefix(cluster)))
    fab = _links(names.fabric_ns(cluster))
    assert {"sw0", "sw1", "isl0a", "isl0b", "host1-eth0", "host1-eth1", "host2-eth0", "c-sw0", "o-sw1"} <= fab
    assert {"eth0", "eth1", "team0", "nu-team0", "nb-prod", "nb-nat0", "nb-iso", "pa-prod", "pb-prod"} <= _links(
        names.host_ns(cluster, "host1")
    )
    # host2 has no team: its first NIC is its uplink and joins the uplink bridge
    assert {"eth0", "eth1", "nu-eth0", "nb-prod"} <= _links(names.host_ns(cluster, "host2"))
    assert ("ip", "nonstop_nat_nat0") in nft.list_tables(names.host_ns(cluster, "host1"))
    assert all(netns.alive(pid) for pid in pids)
    # management plane over each switch: ctl reaches host2 on sw0 and on sw1 (host2 eth1)
    ctl = names.ctl_ns(cluster)
    assert http_get(ctl, "198.18.0.254") == "out 198.18.0.1"
    assert http_get(ctl, "198.18.1.254") == "out 198.18.1.1"
    assert http_get(names.host_ns(cluster, "host2"), "198.18.1.254") == "out 198.18.1.11"
    assert http_get(names.host_ns(cluster, "host1"), "198.18.0.254") == "out 198.18.0.10"

    # the root namespace has no route into the lab: a lab address would leave through a
    # link that was there before the lab (we ask the routing table; no packet is sent)
    with IPRoute() as ipr:
        oif = ipr.route("get", dst="198.18.0.254")[0].get_attr("RTA_OIF")
        assert ipr.get_links(oif)[0].get_attr("IFLA_IFNAME") in before["links"]  # type: ignore[operator]

    removed = fabric.down(cluster)
    assert set(removed["namespaces"]) == set(names.all_namespaces(spec))
    assert_nothing_left(cluster, pids)
    assert_root_untouched(before)


def test_up_is_idempotent(cluster: str) -> None:
    spec = make_spec(cluster, teamed=False)
    first = fabric.up(spec, start_processes=False)
    links = {ns: _links(ns) for ns in first.namespaces}
    second = fabric.up(spec, start_processes=False)
    assert second.namespaces == first.namespaces
    assert {ns: _links(ns) for ns in second.namespaces} == links
    from nonstop.net.host import host_network_plan

    for host in spec.hosts:
        assert host_network_plan(names.host_ns(cluster, host.name), spec, host) == ()


def test_start_after_a_crash_removes_leftovers(cluster: str) -> None:
    spec = make_spec(cluster, teamed=False)
    lab = fabric.up(spec)
    upstream = lab.processes["upstream"]
    # a crash mid-build: phase left at "building", a stray link and a stray process
    wiring.ensure_bridge(names.fabric_ns(cluster), "stray0")
    stray = netns.spawn(names.host_ns(cluster, "host1"), ["sleep", "60"])
    lab.phase = "building"
    state.save(lab)
    again = fabric.up(spec)
    assert "stray0" not in _links(names.fabric_ns(cluster))
    assert not netns.alive(stray.pid) and not netns.alive(upstream)
    assert netns.alive(again.processes["upstream"])
    assert again.phase == "up"


def test_down_without_state_file_uses_the_namespaces(cluster: str) -> None:
    spec = make_spec(cluster, teamed=False)
    fabric.up(spec, start_processes=False)
    guest_ns = f"{names.ns_prefix(cluster)}g-x"
    netns.create(guest_ns)
    state.remove_files(cluster)  # the state dir is gone, the namespaces are not
    fabric.down(cluster, spec)
    assert_nothing_left(cluster, [])


def test_cut_restore_and_isolate(cluster: str) -> None:
    spec = make_spec(cluster, teamed=False)
    fabric.up(spec, start_processes=False)
    h2 = names.host_ns(cluster, "host2")
    faults.cut(spec, "host2", "eth1")
    assert fabric.wait_for_carrier(h2, "eth1", False)
    assert http_get(h2, "198.18.1.254", timeout=0.3) is None
    assert fabric.wait_for_carrier(h2, "eth0", True)
    faults.restore(spec, "host2", "eth1")
    assert fabric.wait_for_carrier(h2, "eth1", True)
    faults.isolate(spec, "host2")
    assert fabric.wait_for_carrier(h2, "eth0", False) and fabric.wait_for_carrier(h2, "eth1", False)
    faults.rejoin(spec, "host2")
    assert fabric.wait_for_carrier(h2, "eth0", True) and fabric.wait_for_carrier(h2, "eth1", True)
    faults.cut(spec, "host2", "eth0", end="host")
    info = wiring.link_state(h2, "eth0")
    assert info is not None and info["up"] is False
    with pytest.raises(faults.UnknownCableError):
        faults.cut(spec, "host2", "eth9")


def test_cut_active_member_keeps_teamed_host_reachable(cluster: str) -> None:
    spec = make_spec(cluster)
    fabric.up(spec)  # team daemon runs for host1
    out = names.out_ns(cluster)
    assert tcp_request(out, "198.18.0.10", 22, timeout=0.5) is None  # nothing listens, but ...
    from nonstop.lab.probe import TcpResponder

    with TcpResponder(names.host_ns(cluster, "host1"), port=7000, name="host1"):
        assert tcp_request(out, "198.18.0.10", 7000) == "host1 198.18.0.254"
        faults.cut(spec, "host1", "eth0")
        # the team daemon fails over to eth1 (sw1); out still reaches the host through the ISL
        deadline = time.monotonic() + 5
        answer = None
        while answer is None and time.monotonic() < deadline:
            answer = tcp_request(out, "198.18.0.10", 7000, timeout=0.3)
        assert answer == "host1 198.18.0.254"


def test_plan_refuses_addresses_outside_the_lab_range(cluster: str) -> None:
    bad = make_spec(cluster, networks=[{"name": "x", "mode": "bridged", "subnet": "10.0.0.0/24"}])
    with pytest.raises(fabric.LabPlanError, match="outside the lab range"):
        fabric.up(bad)
    overlap = make_spec(cluster, networks=[{"name": "x", "mode": "bridged", "subnet": "198.18.1.0/24"}])
    with pytest.raises(fabric.LabPlanError, match="management range"):
        fabric.up(overlap)
    assert netns.list_names(names.ns_prefix(cluster)) == []


def test_up_with_a_smaller_spec_drops_removed_hosts(cluster: str) -> None:
    spec = make_spec(cluster, teamed=False)
    fabric.up(spec, start_processes=False)
    smaller = spec.model_copy(update={"hosts": [spec.host("host1")]})
    lab = fabric.up(smaller, start_processes=False)
    assert not netns.exists(names.host_ns(cluster, "host2"))
    assert "host2-eth0" not in _links(names.fabric_ns(cluster))  # its cables went with it
    assert names.host_ns(cluster, "host2") not in lab.namespaces


def test_balance_xor_team_gets_a_switch_lag(cluster: str) -> None:
    spec = ClusterSpec.model_validate({
        "cluster": cluster,
        "hosts": [{
            "name": "host1", "cpus": 1, "memory": "1GiB",
            "nics": [{"name": "eth0", "switch": "sw0"}, {"name": "eth1", "switch": "sw0"}],
            "teams": [{"name": "team0", "mode": "balance-xor", "members": ["eth0", "eth1"]}],
        }],
    })
    lab = fabric.up(spec)
    lag = names.lag_name("host1", "team0", "sw0")
    assert names.switch_lags(spec) == [("sw0", lag, ["host1-eth0", "host1-eth1"])]
    assert netns.alive(lab.processes["team-daemon:fab"])
    fab = names.fabric_ns(cluster)
    with IPRoute(netns=fab) as ipr:
        masters = {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_MASTER") for link in ipr.get_links()}
        sw0 = ipr.link_lookup(ifname="sw0")[0]
    assert masters[lag] == sw0 and masters["host1-eth0"] is None and masters["host1-eth1"] is None
    assert http_get(names.host_ns(cluster, "host1"), "198.18.0.254") == "out 198.18.0.10"
    fabric.up(spec)  # converging again keeps the LAG ports off the bridge
    with IPRoute(netns=fab) as ipr:
        assert ipr.get_links(ipr.link_lookup(ifname="host1-eth0")[0])[0].get_attr("IFLA_MASTER") is None
    assert http_get(names.host_ns(cluster, "host1"), "198.18.0.254") == "out 198.18.0.10"
