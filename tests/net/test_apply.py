"""Applying host networking to a real namespace: idempotent, convergent, vNIC lifecycle,
and bandwidth limits measured with iperf3."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from nonstop.core.net import names
from nonstop.core.net.render import render_vnic
from nonstop.core.spec import ClusterSpec
from nonstop.net import apply, netns, nft
from nonstop.net import host as host_net

pytestmark = pytest.mark.root


def _spec(cluster: str) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "cluster": cluster,
        "hosts": [{"name": "h1", "cpus": 1, "memory": "1GiB"}],
        "networks": [
            {"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1"},
            {"name": "nat0", "mode": "nat", "subnet": "198.19.20.0/24",
             "port_forwards": [{"host_port": 8080, "guest": "g-0", "guest_port": 80}]},
            {"name": "iso", "mode": "isolated", "subnet": "198.19.30.0/24"},
        ],
        "guests": [{"name": "g", "nics": [{"network": "nat0"}]}],
    })


@pytest.fixture
def host_ns() -> Iterator[tuple[str, ClusterSpec]]:
    cluster = "n" + secrets.token_hex(2)
    ns = f"nonstop-{cluster}-h1"
    netns.create(ns)
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth1"})  # the host's NIC
        ipr.link("add", ifname="other0", kind="bridge")  # someone else's: never touched
    try:
        yield ns, _spec(cluster)
    finally:
        for name in netns.list_names(f"nonstop-{cluster}-"):
            netns.delete(name)


def _links(ns: str) -> dict[str, dict[str, object]]:
    with IPRoute(netns=ns) as ipr:
        msgs = ipr.get_links()
        by_index = {m["index"]: m.get_attr("IFLA_IFNAME") for m in msgs}
        return {
            m.get_attr("IFLA_IFNAME"): {"master": by_index.get(m.get_attr("IFLA_MASTER")), "up": bool(m["flags"] & 1), "mac": m.get_attr("IFLA_ADDRESS")}
            for m in msgs
        }


def test_apply_is_idempotent(host_ns: tuple[str, ClusterSpec]) -> None:
    ns, spec = host_ns
    addresses = {"nat0": {"g-0": "198.19.20.2"}}
    first = host_net.ensure_host_network(ns, spec, "h1", addresses)
    assert len(first) > 10
    links = _links(ns)
    assert links["eth0"]["master"] == "nu-eth0"
    assert links["pa-prod"]["master"] == "nb-prod" and links["pb-prod"]["master"] == "nu-eth0"
    assert links["other0"]["master"] is None
    tables = nft.list_tables(ns)
    assert ("ip", "nonstop_nat_nat0") in tables
    assert host_net.ensure_host_network(ns, spec, "h1", addresses) == ()
    assert _links(ns) == links and nft.list_tables(ns) == tables


def test_apply_converges_from_partial_state(host_ns: tuple[str, ClusterSpec]) -> None:
    ns, spec = host_ns
    host_net.ensure_host_network(ns, spec, "h1")
    wanted = _links(ns)
    with IPRoute(netns=ns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname="nb-nat0")[0])     # a lost bridge
        ipr.link("set", index=ipr.link_lookup(ifname="pa-prod")[0], master=0, state="down")
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], master=0)
        ipr.link("add", ifname="nb-gone", kind="bridge")                 # a network removed from the spec
    nft.delete(ns, "ip", "nonstop_nat_nat0")
    nft.run(ns, ["add", "table", "ip", "nonstop_nat_old"])
    with netns.NetnsThread(ns) as thread:
        thread.call(netns.write_sysctl, "net/ipv4/ip_forward", "0")
    repaired = host_net.ensure_host_network(ns, spec, "h1")
    assert {op.op for op in repaired} >= {"create_link", "set_master", "set_up", "replace_table", "delete_link", "delete_table", "set_sysctl"}
    assert host_net.host_network_plan(ns, spec, "h1") == ()
    after = _links(ns)
    assert "nb-gone" not in after
    assert {k: (v["master"], v["up"]) for k, v in after.items()} == {k: (v["master"], v["up"]) for k, v in wanted.items()}
    assert after["nb-nat0"]["mac"] == wanted["nb-nat0"]["mac"]  # the fixed bridge MAC comes back
    assert ("ip", "nonstop_nat_old") not in nft.list_tables(ns)


def test_vnic_lifecycle(host_ns: tuple[str, ClusterSpec]) -> None:
    ns, spec = host_ns
    with pytest.raises(host_net.NetworkNotReadyError):
        host_net.create_vnic(ns, spec.cluster, "prod", "g-0", 0, "tap")
    host_net.ensure_host_network(ns, spec, "h1")
    tap = host_net.create_vnic(ns, spec.cluster, "prod", "g-0", 0, "tap", bandwidth=8_000_000)
    assert tap.mac == names.vnic_mac(spec.cluster, "g-0", 0) and tap.peer_name is None
    links = _links(ns)
    assert links[tap.name]["master"] == "nb-prod" and links[tap.name]["mac"] != tap.mac
    assert ("netdev", names.bandwidth_table_name(tap.name)) in nft.list_tables(ns)
    assert apply.plan(ns, render_vnic(spec.cluster, "prod", "g-0", 0, "tap", 8_000_000).desired) == ()
    # a new limit updates in place; no limit removes shaper and policer
    host_net.create_vnic(ns, spec.cluster, "prod", "g-0", 0, "tap", bandwidth=16_000_000)
    assert apply.plan(ns, render_vnic(spec.cluster, "prod", "g-0", 0, "tap", 16_000_000).desired) == ()
    host_net.create_vnic(ns, spec.cluster, "prod", "g-0", 0, "tap")
    assert ("netdev", names.bandwidth_table_name(tap.name)) not in nft.list_tables(ns)
    assert apply.plan(ns, render_vnic(spec.cluster, "prod", "g-0", 0, "tap").desired) == ()
    veth = host_net.create_vnic(ns, spec.cluster, "iso", "g-0", 1, "veth")
    assert _links(ns)[veth.peer_name]["mac"] == veth.mac  # type: ignore[index]
    guest_ns = f"nonstop-{spec.cluster}-g0"
    netns.create(guest_ns)
    host_net.move_to_netns(ns, veth.peer_name or "", guest_ns, address="198.19.30.2/24")
    host_net.move_to_netns(ns, veth.peer_name or "", guest_ns, address="198.19.30.2/24")  # idempotent
    assert _links(guest_ns)["eth0"]["mac"] == veth.mac
    assert host_net.delete_vnic(ns, spec.cluster, "g-0", 0, "tap")
    assert host_net.delete_vnic(ns, spec.cluster, "g-0", 1, "veth")
    assert not host_net.delete_vnic(ns, spec.cluster, "g-0", 1, "veth")
    assert "eth0" not in _links(guest_ns)  # the guest end went with the host end
    assert not [t for t in nft.list_tables(ns) if t[1].startswith("nonstop_bw_")]


def _iperf(ns_server: str, ns_client: str, server_ip: str, reverse: bool, seconds: int = 3) -> float:
    server = netns.spawn(ns_server, ["iperf3", "-s", "-1", "-B", server_ip])
    try:
        deadline = time.monotonic() + 5
        while True:
            proc = netns.run(ns_client, ["iperf3", "-c", server_ip, "-t", str(seconds), "-O", "1", "-J", *(["-R"] if reverse else [])], timeout=30)
            result = json.loads(proc.stdout or b"{}")
            if (proc.returncode == 0 and "error" not in result) or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the server was not listening yet
        assert proc.returncode == 0 and "error" not in result, proc.stdout.decode()[-500:]
        return float(result["end"]["sum_received"]["bits_per_second"]) / 8
    finally:
        netns.stop_pids([server.pid])


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 (Debian package iperf3) is not installed")
def test_bandwidth_limit_both_directions_within_ten_percent(host_ns: tuple[str, ClusterSpec]) -> None:
    ns, spec = host_ns
    rate = 5_000_000  # bytes/s: 40 Mbit/s
    host_net.ensure_host_network(ns, spec, "h1")
    vnic = host_net.create_vnic(ns, spec.cluster, "nat0", "g-0", 0, "veth", bandwidth=rate * 8)
    guest_ns = f"nonstop-{spec.cluster}-g0"
    netns.create(guest_ns)
    host_net.move_to_netns(ns, vnic.peer_name or "", guest_ns, address="198.19.20.2/24", gateway="198.19.20.1")
    from_guest = _iperf(ns, guest_ns, "198.19.20.1", reverse=False)  # policed on the host side's ingress
    to_guest = _iperf(ns, guest_ns, "198.19.20.1", reverse=True)    # shaped by tbf toward the guest
    assert abs(from_guest / rate - 1) <= 0.10, f"from guest {from_guest:.0f} B/s vs {rate}"
    assert abs(to_guest / rate - 1) <= 0.10, f"to guest {to_guest:.0f} B/s vs {rate}"
    # and without a limit the same path is much faster: the limit is what we measured
    host_net.create_vnic(ns, spec.cluster, "nat0", "g-0", 0, "veth")
    assert _iperf(ns, guest_ns, "198.19.20.1", reverse=True, seconds=2) > 3 * rate
