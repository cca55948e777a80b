"""A partitioned host (root): its heartbeats, the controller's acknowledgements and its store
traffic are dropped by nftables while it keeps running, and its BMC does not answer the
controller. The store is etcd, reached by every lab host through its own namespace (relayed,
as ``nonstop up --store etcd://`` does), so the drop really cuts the host from the store: its
agent loses its lease and must fence itself (stop its guests) after the self-fence timeout;
the controller fences it by waiting 2 x that timeout since it last heard the host, then starts
its guests elsewhere. A checker sampling every guest's instances every 50 ms must never see two.
(With the SQLite lab store only heartbeats can be cut; the agent then self-fences on controller
silence — the same code path minus the lease, covered by tests/ha/test_selffence.py.)"""

from __future__ import annotations

import time

import pytest

from .conftest import running_cluster
from .harness import InstanceChecker, Load
from .lab_spec import lab_spec

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

SELF_FENCE = 2.0


def test_partitioned_host_self_fences_is_fenced_and_never_runs_twice() -> None:
    spec = lab_spec(failback="manual", self_fence=SELF_FENCE)
    # The victim's BMC is unreachable for the controller: only self-fencing can make it safe.
    with running_cluster(spec, store="etcd", controller_args=["--bmc", "h1=127.0.0.1:9"]) as (lab, probe):
        guests = sorted(probe.running())
        on_victim = sorted(g for g, h in probe.running().items() if h == "h1")
        assert on_victim, "soft spread puts one guest on every host"
        with InstanceChecker(lab, guests) as checker, Load(lab.services["api"]["port"]) as load:
            time.sleep(0.5)
            start = time.time()
            lab.partition("h1")
            dead = probe.wait_for("host-dead", lambda: probe.first("host-dead", "h1", start), timeout=10)
            fence = probe.wait_for("fence", lambda: probe.first("fence", "h1", start), timeout=20)
            probe.wait_for("guests running elsewhere", lambda: all(
                probe.running().get(g) not in (None, "h1") for g in on_victim), timeout=20)
            # the partitioned agent stopped its own guest and refuses to start it
            observed = probe.observed()
            time.sleep(0.5)
            drops = lab.partition_drops("h1")
            lab.heal("h1")
            try:
                probe.wait_for("h1 heard again", lambda: probe.status()["hosts"].get("h1") == "up", timeout=30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nagent-h1.log ends:\n{(lab.run_dir / 'agent-h1.log').read_text()[-3000:]}") from None
            print(f"\nh1 heard again {time.time() - start:.1f} s after the partition began")
            # the agent's store connection recovers (gRPC keepalive closed the dead one; it redials
            # every second), it takes a new lease
            probe.wait_for("self-fence lifted", lambda: "self-fence lifted" in (lab.run_dir / "agent-h1.log").read_text(),
                           timeout=30)
            time.sleep(1.0)
        attempt = probe.first("fence-attempt", "h1", start)
        log = (lab.run_dir / "agent-h1.log").read_text()
        assert dead["at"] - start < 1.5
        assert attempt is not None and "unreachable" in attempt["reason"], attempt
        assert "watchdog-wait" in fence["reason"] and "assumed-off" in fence["reason"], fence
        assert fence["at"] - start >= 2 * SELF_FENCE - 0.2, "restarted elsewhere before the host could have self-fenced"
        # Heartbeat acks and lease renewals stop together; whichever went quiet first names the
        # self-fence (both are correct reasons). That the store really was cut shows in the
        # partition's own counters: the agent's store packets were dropped (its log may or may not
        # show a failed call, depending on which call hit the cut and how long it waited).
        assert ("SELF-FENCE: store lease not renewed" in log
                or "SELF-FENCE: nothing heard from the controller" in log), log[-2000:]
        print(f"partition dropped {drops}; store failures in the agent's log: "
              f"{[s for s in ('lease check:', 'keepalive failed:', 'store unavailable') if s in log]}")
        assert drops.get("udp", 0) > 0, drops
        assert drops.get("tcp", 0) > 0, f"the partition must cut the agent's store traffic too: {drops}"
        assert all(observed.get(g, {}).get("host") != "h1" or observed[g].get("state") != "running" for g in on_victim)
        assert checker.samples > 50
        assert checker.max_instances == 1, checker.worst
        assert load.failures == [], load.failures[:3]
        assert len(probe.running()) == len(guests)
        assert "self-fence lifted" in (lab.run_dir / "agent-h1.log").read_text()
