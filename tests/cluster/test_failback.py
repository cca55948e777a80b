"""Failback when a failed host returns (root): ``auto`` moves its guests home after the
stability window, ``balanced`` rebalances only because the spread target is exceeded; neither
fails a client request. (``manual`` is covered in test_failover.py.)"""

from __future__ import annotations

import time

import pytest

from .conftest import running_cluster
from .harness import InstanceChecker, Load
from .lab_spec import lab_spec

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

STABILITY = 2.0


@pytest.mark.parametrize("policy", ["auto", "balanced"])
def test_failback_after_the_stability_window(policy: str) -> None:
    spec = lab_spec(failback=policy, stability=STABILITY)
    if policy == "balanced":
        spec = spec.model_copy(update={"policies": spec.policies.model_copy(update={"spread_target": 0.05})})
    with running_cluster(spec) as (lab, probe):
        home = sorted(g for g, h in probe.running().items() if h == "h1")
        assert home
        with InstanceChecker(lab, sorted(probe.running())) as checker, Load(lab.services["api"]["port"]) as load:
            killed = lab.fail_host("h1", "bmc")
            probe.wait_for("failover done", lambda: probe.first("failover-done", "h1", killed), timeout=20)
            probe.wait_for("all running elsewhere", lambda: len(r := probe.running()) == 3 and "h1" not in r.values(),
                           timeout=20)
            lab.power_on("h1")
            up = probe.wait_for("h1 up", lambda: [e for e in probe.events(killed) if e["kind"] == "host-state"
                                                  and e["subject"] == "h1" and e["after"] == "up"], timeout=20)[0]
            failback = probe.wait_for("failback", lambda: probe.first("failback", "h1", killed), timeout=30)
            probe.wait_for("a guest back on h1", lambda: len(probe.running()) == 3 and "h1" in probe.running().values(),
                           timeout=20)
            time.sleep(1.0)
        assert failback["at"] - up["at"] >= STABILITY - 0.1, "failback before the stability window passed"
        if policy == "auto":
            assert sorted(g for g, h in probe.running().items() if h == "h1") == home
            assert "home" in failback["reason"]
        else:
            assert "rebalancing" in failback["reason"], failback
        assert checker.max_instances == 1, checker.worst
        assert load.failures == [], f"{len(load.failures)} failed of {load.ok}: {load.failures[:3]}"


def test_a_restarted_controller_resumes_the_failback_window_where_it_was() -> None:
    """kill -9 of the controller in the middle of h1's stability window: its successor reads the
    controller memory (up-since, flap memory, homes) back from the store, so the guests go home at
    the original window's end — not one whole window after the successor started."""
    stability = 8.0
    spec = lab_spec(failback="auto", stability=stability)
    with running_cluster(spec) as (lab, probe):
        home = sorted(g for g, h in probe.running().items() if h == "h1")
        with InstanceChecker(lab, sorted(probe.running())) as checker, Load(lab.services["api"]["port"]) as load:
            killed = lab.fail_host("h1", "bmc")
            probe.wait_for("failover done", lambda: probe.first("failover-done", "h1", killed), timeout=20)
            lab.power_on("h1")
            up = probe.wait_for("h1 up", lambda: [e for e in probe.events(killed) if e["kind"] == "host-state"
                                                  and e["subject"] == "h1" and e["after"] == "up"], timeout=20)[0]
            time.sleep(max(0.0, up["at"] + 3.0 - time.time()))
            restarted = time.time()
            lab.restart_controller(kill=True)
            failback = probe.wait_for("failback", lambda: probe.first("failback", "h1", killed), timeout=30)
            probe.wait_for("guests home", lambda: sorted(g for g, h in probe.running().items() if h == "h1") == home,
                           timeout=20)
            time.sleep(1.0)
        print(f"h1 up at +0, controller killed at +{restarted - up['at']:.1f}s, failback at "
              f"+{failback['at'] - up['at']:.1f}s (window {stability:.0f}s)")
        assert failback["at"] - up["at"] >= stability - 0.1, "failback before the stability window passed"
        assert failback["at"] < restarted + stability - 1.0, "the successor started the window again"
        assert checker.max_instances == 1, checker.worst
        assert load.failures == [], f"{len(load.failures)} failed of {load.ok}: {load.failures[:3]}"
