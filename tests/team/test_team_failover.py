"""Failover with the real team daemon (root): cable cuts, dead links, failback, delays, LAG spread."""

from __future__ import annotations

import json
import socket
import time

import pytest
from pyroute2 import IPRoute

from nonstop.core.spec import PrimaryReselect, TeamSpec
from nonstop.net import netns
from nonstop.net.team_testbed import TeamTestbed
from nonstop.net.team_traffic import TcpStream, UdpProbeStream

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def active_is(member: str | None):  # noqa: ANN201
    return lambda status: status["active"] == member


def test_cutting_the_active_cable_keeps_tcp_alive_and_loses_under_100ms() -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0")
    with TeamTestbed(spec) as tb:
        tb.start_daemon()
        for cut, survivor in (("eth0", "eth1"), ("eth0", "eth1")):
            tb.wait_for(active_is(cut))
            tcp = TcpStream(tb.h1, tb.h2, tb.h2_ip).start()
            udp = UdpProbeStream(tb.h1, tb.h2, tb.h2_ip).start()
            time.sleep(0.3)
            tb.cut(cut)
            status = tb.wait_for(active_is(survivor))
            time.sleep(0.4)
            probes = udp.stop()
            sent, received = tcp.finish()
            assert received == sent > 0  # the same connection carried on
            assert probes.received > 0.5 * probes.sent
            assert probes.longest_gap <= 0.100, probes
            assert status["members"][cut]["state"] == "down"
            tb.restore(cut)  # primary_reselect always: back to eth0 for the second round
        assert tb.wait_for(active_is("eth0"))["failovers"] == 4
        kinds = [e["kind"] for e in tb.events()]
        assert kinds.count("active-changed") == 5 and "member-state" in kinds


def test_a_dead_link_with_carrier_is_caught_by_arp_probes() -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0", miimon=0.05, arp_targets=["198.18.91.2"])
    with TeamTestbed(spec, subnet_octet=91) as tb:
        tb.start_daemon()
        tb.wait_for(lambda s: s["members"]["eth1"]["probe_ok"] is True and s["active"] == "eth0")
        tb.blackhole("eth0")
        began = time.monotonic()
        status = tb.wait_for(active_is("eth1"), timeout=2.0)
        assert time.monotonic() - began < 1.0
        assert tb.carrier("eth0") and status["members"]["eth0"]["carrier"] is True
        assert status["members"]["eth0"]["probe_ok"] is False
        tb.wait_reachable(timeout=2.0)
        tb.blackhole("eth0", on=False)
        tb.wait_for(active_is("eth0"), timeout=2.0)
        tb.wait_reachable(timeout=2.0)


@pytest.mark.parametrize(
    ("reselect", "speeds", "fails_back"),
    [
        (PrimaryReselect.ALWAYS, {}, True),
        (PrimaryReselect.FAILURE, {}, False),
        (PrimaryReselect.BETTER, {"eth0": 10_000_000_000, "eth1": 1_000_000_000}, True),
        (PrimaryReselect.BETTER, {}, False),
    ],
    ids=["always", "failure", "better-faster-primary", "better-equal-speed"],
)
def test_failback_follows_primary_reselect(reselect: PrimaryReselect, speeds: dict[str, int], fails_back: bool) -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0", primary_reselect=reselect)
    with TeamTestbed(spec, speeds=speeds) as tb:
        tb.start_daemon()
        tb.wait_for(active_is("eth0"))
        tb.cut("eth0")
        tb.wait_for(active_is("eth1"))
        tb.restore("eth0")
        status = tb.wait_for(lambda s: s["members"]["eth0"]["state"] == "up")
        time.sleep(0.3)  # give a wrong failback time to happen
        status = tb.status()
        assert status["active"] == ("eth0" if fails_back else "eth1")
        assert status["failovers"] == (2 if fails_back else 1)
        tb.wait_reachable()


def test_up_and_down_delays_are_honoured() -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0", updelay=0.4, downdelay=0.25)
    with TeamTestbed(spec) as tb:
        tb.start_daemon()
        tb.wait_for(active_is("eth0"))
        tb.cut("eth0")
        going = tb.wait_for(lambda s: s["members"]["eth0"]["state"] == "going-down")
        assert going["active"] == "eth0"  # still used during the down-delay
        tb.wait_for(active_is("eth1"), timeout=2.0)
        tb.restore("eth0")
        tb.wait_for(lambda s: s["members"]["eth0"]["state"] == "going-up")
        assert tb.status()["active"] == "eth1"
        tb.wait_for(active_is("eth0"), timeout=2.0)
        changes = [e for e in tb.events() if e["kind"] == "member-state" and e["member"] == "eth0"]
        assert [(c["old"], c["new"]) for c in changes] == [
            ("up", "going-down"), ("going-down", "down"), ("down", "going-up"), ("going-up", "up")]
        down_delay = changes[1]["monotonic"] - changes[0]["monotonic"]
        up_delay = changes[3]["monotonic"] - changes[2]["monotonic"]
        assert 0.25 <= down_delay < 0.25 + 0.3, down_delay
        assert 0.4 <= up_delay < 0.4 + 0.3, up_delay


def test_balance_xor_spreads_100_flows_and_survives_a_member_cut() -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], mode="balance-xor", hash_policy="layer3+4")
    with TeamTestbed(spec, lag=True) as tb:
        tb.start_daemon(lag=True)
        sink = netns.call(tb.h2, socket.socket)
        sink.bind((tb.h2_ip, 7200))
        sink.listen(128)
        before = {m: tb.counters(tb.h1, m)["tx_bytes"] for m in spec.members}
        payload = b"y" * 32768
        for _ in range(100):
            client = netns.call(tb.h1, socket.socket)
            client.connect((tb.h2_ip, 7200))
            conn, _ = sink.accept()
            client.sendall(payload)
            client.close()
            got = 0
            while chunk := conn.recv(65536):
                got += len(chunk)
            conn.close()
            assert got == len(payload)
        sink.close()
        grew = {m: tb.counters(tb.h1, m)["tx_bytes"] - before[m] for m in spec.members}
        shares = {m: grew[m] / sum(grew.values()) for m in grew}
        assert min(shares.values()) >= 0.30, shares
        # A member's cable cut: the host team and the switch LAG both drop it; flows go on.
        tcp = TcpStream(tb.h1, tb.h2, tb.h2_ip, port=7201).start()
        tb.cut("eth1")
        tb.wait_for(lambda s: s["transmit"] == ["eth0"])
        deadline = time.monotonic() + 2
        while json.loads((tb.workdir / "lag-status.json").read_text())["teams"]["lag0"]["transmit"] != ["h1e0"]:
            assert time.monotonic() < deadline, "the switch LAG kept the cut port"
            time.sleep(0.02)
        time.sleep(0.3)
        sent, received = tcp.finish()
        assert received == sent > 0
        tb.wait_reachable()


def test_the_team_loses_carrier_only_when_every_member_is_down() -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0")
    with TeamTestbed(spec) as tb:
        tb.start_daemon()
        tb.wait_for(active_is("eth0"))
        tb.cut("eth0")
        tb.wait_for(active_is("eth1"))
        assert tb.carrier("team0")
        tb.cut("eth1")
        tb.wait_for(active_is(None))
        deadline = time.monotonic() + 2
        while tb.carrier("team0"):
            assert time.monotonic() < deadline, "team0 kept carrier with no usable member"
            time.sleep(0.02)
        tb.restore("eth1")
        tb.wait_for(active_is("eth1"))
        tb.wait_reachable(timeout=3.0)
        assert tb.carrier("team0")
        assert [e["up"] for e in tb.events() if e["kind"] == "carrier"] == [True, False, True]


def test_after_failover_the_switch_relearns_silent_guests_behind_the_team() -> None:
    # A dead link with carrier: the switch never flushes its FDB, so a guest that stays
    # silent is reachable again only because the daemon announces its MAC on the new port.
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0", miimon=0.05, arp_targets=["198.18.93.2"])
    with TeamTestbed(spec, subnet_octet=93, guest=True) as tb:
        guest = netns.call(tb.g, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        guest.bind((tb.guest_ip, 7600))
        guest.settimeout(0.05)
        guest.sendto(b"hello", (tb.h2_ip, 7601))  # the switch learns the guest's MAC on eth0's port
        sender = netns.call(tb.h2, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        with IPRoute(netns=tb.h2) as ipr:  # a static neighbour: h2 never ARPs the guest again
            ipr.neigh("replace", dst=tb.guest_ip, lladdr="02:6e:73:00:00:33", state=0x80,
                      ifindex=ipr.link_lookup(ifname="eth0")[0])
        sender.sendto(b"before", (tb.guest_ip, 7600))
        assert guest.recv(64) == b"before"
        tb.start_daemon()
        tb.wait_for(lambda s: s["members"]["eth1"]["probe_ok"] is True and s["active"] == "eth0")
        time.sleep(1.2)  # the daemon refreshes its announcement list every second
        tb.blackhole("eth0")
        tb.wait_for(active_is("eth1"))
        received = 0
        for i in range(50):
            sender.sendto(b"after%d" % i, (tb.guest_ip, 7600))
            try:
                while guest.recv(64):
                    received += 1
            except TimeoutError:
                pass
        sender.close()
        guest.close()
        assert received >= 45, received


def test_the_daemon_reasserts_its_rules_when_someone_rewrites_them() -> None:
    from nonstop.net.team import setup_team, team_status

    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0", primary_reselect="failure")
    with TeamTestbed(spec) as tb:
        tb.start_daemon()
        tb.cut("eth0")
        tb.wait_for(active_is("eth1"))
        tb.restore("eth0")
        tb.wait_for(lambda s: s["members"]["eth0"]["state"] == "up")
        setup_team(tb.h1, spec)  # installs the primary, eth0, behind the daemon's back
        assert team_status(tb.h1, spec)["active"] == "eth0"
        deadline = time.monotonic() + 3
        while team_status(tb.h1, spec)["active"] != "eth1":
            assert time.monotonic() < deadline, "the daemon never restored its own choice"
            time.sleep(0.05)
        assert tb.status()["active"] == "eth1"
