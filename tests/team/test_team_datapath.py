"""The veth + nft data path for real (root): rulesets load, traffic flows, teardown is clean."""

from __future__ import annotations

import socket
import time

import pytest
from pyroute2 import IPRoute, netns

from nonstop.core.net.team_hash import IPPROTO_UDP, FrameKey, nft_member_index
from nonstop.core.net.team_render import peer_name, render_delete, render_ruleset
from nonstop.core.spec import HashPolicy, TeamMode, TeamSpec
from nonstop.net import netns as namespaces
from nonstop.net import nft
from nonstop.net.team import chain_rules, forward_targets, link_info, setup_team, team_status, teardown_team
from nonstop.net.team_testbed import TeamTestbed
from nonstop.net.team_traffic import TcpStream

from .test_team_render import CASES

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def test_every_rendered_ruleset_loads_and_forwards_where_it_says() -> None:
    ns = f"nonstop-tm{int(time.time() * 1000) % 100000:05d}-nft"
    netns.create(ns)
    try:
        with IPRoute(netns=ns) as ipr:
            for dev in ("eth0", "eth1", "eth2", "team0p", "sw0-h1-e0", "sw0-h1-e1", "lag-h1p"):
                ipr.link("add", ifname=dev, kind="veth", peer=f"x{abs(hash(dev)) % 10**8}")
        for name, path in CASES.items():
            nft.apply(ns, render_ruleset(path))
            nft.apply(ns, render_ruleset(path))  # idempotent
            chains = chain_rules(nft.list_table(ns, "netdev", path.table) or [])
            assert forward_targets(chains["tx"]) == list(path.transmit), name
            for member in path.members:
                rx = [c for c in chains if c.startswith("rx_") and c[3:] == member.replace("-", "_")][0]
                assert (forward_targets(chains[rx]) == [path.port]) == (member in path.transmit), (name, member)
            nft.apply(ns, render_delete(path.table))
            assert nft.list_table(ns, "netdev", path.table) is None
    finally:
        netns.remove(ns)


@pytest.mark.parametrize(
    ("mode", "lag"),
    [("active-backup", False), ("balance-xor", True), ("round-robin", True), ("broadcast", False)],
)
def test_tcp_flows_through_the_team_in_every_mode(mode: str, lag: bool) -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], mode=mode, hash_policy="layer3+4")
    with TeamTestbed(spec, lag=lag) as tb:
        before = {m: tb.counters(tb.h1, m)["tx_packets"] for m in spec.members}
        # 16 flows: all on one member by chance under balance-xor has probability 2 ** -15
        streams = [TcpStream(tb.h1, tb.h2, tb.h2_ip, port=7100 + i, pause=0.001).start() for i in range(16)]
        time.sleep(0.4)
        for stream in streams:
            sent, received = stream.finish()
            assert sent > 100_000 and received == sent
        grew = {m: tb.counters(tb.h1, m)["tx_packets"] - before[m] for m in spec.members}
        if mode == "active-backup":
            assert grew["eth0"] > 1000 and grew["eth1"] < 20, grew  # backup only sends stray frames
        else:
            assert min(grew.values()) > 100, grew
        status = team_status(tb.h1, spec)
        assert status["installed"] and status["transmit"] == (["eth0"] if mode == "active-backup" else ["eth0", "eth1"])


def test_setup_and_teardown_are_idempotent_and_leave_nothing() -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"])
    with TeamTestbed(spec) as tb:
        assert setup_team(tb.h1, spec) == "team0"  # second setup: same result, still reachable
        tb.wait_reachable()
        teardown_team(tb.h1, spec)
        teardown_team(tb.h1, spec)
        with IPRoute(netns=tb.h1) as ipr:
            names = {link.get("IFLA_IFNAME") for link in ipr.get_links()}
        assert "team0" not in names and peer_name("team0") not in names and {"eth0", "eth1"} <= names
        assert nft.list_table(tb.h1, "netdev", "nonstop_team_team0") is None
        assert not team_status(tb.h1, spec)["installed"]
    assert not [n for n in netns.listnetns() if n.startswith(tb.prefix)]


def test_kernel_jhash_picks_the_member_the_pure_hash_predicts() -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], mode=TeamMode.BALANCE_XOR, hash_policy=HashPolicy.LAYER3_4)
    with TeamTestbed(spec, lag=True) as tb, IPRoute(netns=tb.h1) as ipr:

        def tx_packets() -> dict[str, int]:
            return {m: (link_info(ipr, m) or {"counters": {}})["counters"]["tx_packets"] for m in spec.members}

        mismatches = []
        for port in range(40000, 40032):
            sock = namespaces.call(tb.h1, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((tb.h1_ip, port))
            key = FrameKey("02:6e:73:00:00:01", "00:00:00:00:00:00", src_ip=tb.h1_ip, dst_ip=tb.h2_ip,
                           protocol=IPPROTO_UDP, src_port=port, dst_port=9999)
            predicted = spec.members[nft_member_index(spec.hash_policy, key, 2)]
            before = tx_packets()
            for _ in range(20):
                sock.sendto(b"x", (tb.h2_ip, 9999))
            sock.close()
            after = tx_packets()
            grew = {m: after[m] - before[m] for m in spec.members}
            other = [m for m in spec.members if m != predicted][0]
            if not (grew[predicted] >= 20 and grew[other] < 20):
                mismatches.append((port, predicted, grew))
        assert not mismatches


def test_link_poller_reads_carrier_of_every_link() -> None:
    from nonstop.net.team_frames import LinkPoller

    with TeamTestbed(TeamSpec(name="team0", members=["eth0", "eth1"])) as tb:
        poller = namespaces.call(tb.h1, LinkPoller)
        try:
            carriers = poller.carriers()
            assert carriers["eth0"] and carriers["eth1"] and carriers["team0"] and "lo" in carriers
            tb.cut("eth1")
            deadline = time.monotonic() + 2
            while poller.carriers()["eth1"]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert poller.carriers()["eth0"]
        finally:
            poller.close()
