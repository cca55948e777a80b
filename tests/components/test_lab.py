"""Component failures in a whole lab cluster (root): 3 teamed hosts, 3 process guests behind
the balancer, the controller, the lab BMCs, and the hardware watcher reading them over Redfish
from the ctl namespace. Tests run in file order; each leaves the cluster whole again.

- one PSU under "alert": host degraded within 2 s, events, no guest moves;
- a NIC failed through the BMC: its cable is cut, the team fails over, host degraded
  (network), nothing moves, the host stays up;
- one PSU under "evacuate": the guests leave the host with zero failed requests under load
  (the controller's maintenance evacuation), and the host is released after the window;
- the second PSU: the host powers off, the controller fences it (verified through Redfish)
  and fails its guests over.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster.conftest import running_cluster
from cluster.harness import ClusterProbe, Load

from nonstop.components.chaos import fail_component
from nonstop.components.runner import with_policy
from nonstop.core.spec import ClusterSpec
from nonstop.lab.cluster import LabCluster
from nonstop.lab.fabric import team_status_path
from nonstop.store import keys

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

REPORT: dict[str, Any] = {}


def teamed_spec() -> ClusterSpec:
    hosts = [{"name": f"h{i}", "cpus": 2, "memory": "2GiB",
              "nics": [{"name": "eth0", "switch": "sw0"}, {"name": "eth1", "switch": "sw1"}],
              "teams": [{"name": "team0", "members": ["eth0", "eth1"], "primary": "eth0", "miimon": "50ms"}]}
             for i in (1, 2, 3)]
    return ClusterSpec.model_validate({
        "cluster": "t" + secrets.token_hex(2), "switches": ["sw0", "sw1"], "hosts": hosts,
        "networks": [{"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1",
                      "uplink": "team0"}],
        "guests": [{"name": "api", "kind": "process", "replicas": 3, "vcpus": 1, "memory": "64MiB",
                    "nics": [{"network": "prod"}], "port": 8080, "spread": "soft", "priority": 100}],
        "services": [{"name": "api", "listen": "127.0.0.1:0", "backends": {"group": "api", "port": 8080},
                      "health": {"type": "http", "path": "/health", "interval": "500ms", "timeout": "300ms",
                                 "rise": 1, "fall": 2}, "connect_timeout": "300ms", "retries": 3}],
        "policies": {"ha": {"host_failures_to_tolerate": 1, "heartbeat_interval": "100ms", "self_fence_timeout": 3.0,
                            "failback": "manual", "max_restarts": 3}},
    })


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LabCluster, ClusterProbe]]:
    with running_cluster(teamed_spec()) as running:
        yield running
    if REPORT:
        print("\ncomponent failures:", json.dumps(REPORT, indent=1))


@contextlib.contextmanager
def policy(lab: LabCluster, probe: ClusterProbe, on_degraded: str, window: float = 1.0) -> Iterator[None]:
    """The cluster's own watcher (LabCluster starts one) under ``on_degraded``: the policy goes
    into the stored spec, as ``nonstop apply`` would put it, and the watcher follows it."""
    put_spec(probe, with_policy(lab.spec, on_degraded, window))
    try:
        for host in lab.bmc_ports:
            try:
                probe.wait_for(f"{host} under {on_degraded}", lambda h=host: components(probe, h).get("on_degraded")
                               == on_degraded and components(probe, h).get("health") == "healthy", timeout=20)
            except AssertionError:
                print(f"{host} components:", components(probe, host))
                raise
        yield
    finally:
        put_spec(probe, lab.spec)


def components(probe: ClusterProbe, host: str) -> dict[str, Any]:
    return probe._run(lambda s: s.get_json(keys.host_components(probe.lab.cluster, host))) or {}  # noqa: SLF001


def host_with_guests(probe: ClusterProbe) -> str:
    running = probe.running()
    return max(sorted(set(running.values())), key=lambda h: list(running.values()).count(h))


def test_the_lab_runs_one_watcher_that_writes_every_host(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    """``python -m nonstop.components`` started by the LabCluster (in ctl, like the controller),
    and no other watcher of this cluster."""
    from nonstop.net import netns

    lab, probe = cluster
    assert netns.alive(lab.pids["components"])
    for host in lab.bmc_ports:
        probe.wait_for(f"{host} record", lambda h=host: components(probe, h).get("health") == "healthy", timeout=15)
    assert components(probe, "h1")["groups"]["power"]["total"] == 2
    for host in lab.bmc_ports:  # the lab BMCs push Redfish events to it
        probe.wait_for(f"{host} subscribed", lambda h=host: components(probe, h).get("events") == "subscribed",
                       timeout=10)
    watchers = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"nonstop.components" in argv and lab.cluster.encode() in argv:
                watchers.append(int(proc.name))
    assert watchers == [lab.pids["components"]]


def test_one_psu_alert_only_degrades_and_moves_nothing(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    host = host_with_guests(probe)
    before = probe.running()
    with policy(lab, probe, "alert"):
        probe.wait_for("first reading", lambda: components(probe, host).get("health") == "healthy", timeout=5)
        start = time.time()
        t0 = time.monotonic()
        fail_component(lab, "psu", host, "PSU1")
        probe.wait_for("degraded", lambda: components(probe, host).get("health") == "degraded", timeout=2.0, every=0.02)
        took = time.monotonic() - t0
        event = probe.wait_for("host-health event", lambda: probe.first("host-health", host, start), timeout=2)
        assert "power: degraded (PSU1" in event["reason"]
        assert probe.first("component-alert", host, start) is not None
        time.sleep(2.0)
        assert probe.running() == before
        assert components(probe, host)["placement"] == "normal"
        assert probe.first("maintenance", host, start) is None
        fail_component(lab, "psu", host, "PSU1", failed=False)
        probe.wait_for("healthy", lambda: components(probe, host).get("health") == "healthy", timeout=3)
    REPORT["psu-alert"] = {"host": host, "degraded_after_s": round(took, 3), "guests_moved": 0}


def test_nic_failure_cuts_cable_team_fails_over_nothing_moves(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    host = host_with_guests(probe)
    before = probe.running()
    status_file = Path(team_status_path(lab.cluster, host))

    def team() -> dict[str, Any]:
        try:
            return dict(json.loads(status_file.read_text())["teams"]["team0"])
        except (OSError, ValueError, KeyError):
            return {}

    assert team().get("active") == "eth0"
    with policy(lab, probe, "no-new-guests"), Load(lab.services["api"]["port"]) as load:
        probe.wait_for("first reading", lambda: components(probe, host).get("health") == "healthy", timeout=5)
        probe.wait_for("the service answers", lambda: load.ok >= 20, timeout=15)
        load.failures.clear()
        start, t0 = time.time(), time.monotonic()
        fail_component(lab, "nic", host, "eth0")
        probe.wait_for("team on eth1", lambda: team().get("active") == "eth1", timeout=3, every=0.02)
        failover = time.monotonic() - t0
        got = probe.wait_for("network degraded", lambda: (c := components(probe, host)).get("health") == "degraded"
                             and c, timeout=2.0, every=0.02)
        degraded = time.monotonic() - t0
        assert got["groups"]["network"]["state"] == "degraded" and got["groups"]["power"]["state"] == "redundant"
        assert got["placement"] == "no-new-guests"
        time.sleep(1.5)
        assert probe.status()["hosts"][host] == "up"
        assert probe.running() == before
        fail_component(lab, "nic", host, "eth0", failed=False)
        probe.wait_for("healthy", lambda: components(probe, host).get("health") == "healthy", timeout=3)
        probe.wait_for("eligible again", lambda: components(probe, host).get("placement") == "normal", timeout=3)
    assert load.failures == [], load.failures[:3]
    assert probe.first("maintenance", host, start) is None
    REPORT["nic"] = {"host": host, "team_failover_s": round(failover, 3), "degraded_after_s": round(degraded, 3),
                     "requests_ok": load.ok, "failed": len(load.failures), "guests_moved": 0}


def test_one_psu_evacuate_moves_guests_with_zero_failed_requests(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    host = host_with_guests(probe)
    moving = sorted(g for g, h in probe.running().items() if h == host)
    with policy(lab, probe, "evacuate", window=1.0), Load(lab.services["api"]["port"]) as load:
        probe.wait_for("first reading", lambda: components(probe, host).get("health") == "healthy", timeout=5)
        probe.wait_for("the service answers", lambda: load.ok >= 20, timeout=15)
        load.failures.clear()  # only the evacuation counts (a fresh lab's balancer may still be syncing)
        start, t0 = time.time(), time.monotonic()
        fail_component(lab, "psu", host, "PSU2")
        probe.wait_for("degraded", lambda: components(probe, host).get("health") == "degraded", timeout=2.0, every=0.02)
        degraded = time.monotonic() - t0
        probe.wait_for("maintenance", lambda: probe.first("maintenance", host, start), timeout=5)
        probe.wait_for("evacuated", lambda: probe.first("evacuated", host, start), timeout=30)
        probe.wait_for("all running elsewhere", lambda: len(r := probe.running()) == 3 and host not in r.values(),
                       timeout=30)
        evacuated = time.monotonic() - t0
        time.sleep(0.5)
        fail_component(lab, "psu", host, "PSU2", failed=False)
        repaired = time.monotonic()
        probe.wait_for("released", lambda: (probe._run(  # noqa: SLF001
            lambda s: s.get_json(keys.host_desired(lab.cluster, host))) or {}).get("state") == "up", timeout=5)
        released = time.monotonic() - repaired
    assert load.failures == [], load.failures[:3]
    assert released >= 1.0
    probe.wait_for("host up again", lambda: probe.status().get("hosts", {}).get(host) == "up", timeout=10)
    REPORT["psu-evacuate"] = {"host": host, "guests": moving, "degraded_after_s": round(degraded, 3),
                              "evacuated_after_s": round(evacuated, 3), "released_after_repair_s": round(released, 3),
                              "requests_ok": load.ok, "failed": len(load.failures)}


def put_spec(probe: ClusterProbe, spec: ClusterSpec) -> None:
    from nonstop.store.state import put_spec as put

    probe._run(lambda s: put(s, spec))  # noqa: SLF001


def scaled(spec: ClusterSpec, replicas: int) -> ClusterSpec:
    groups = [g.model_copy(update={"replicas": replicas}) for g in spec.guests]
    return spec.model_copy(update={"guests": groups})


def test_no_new_guests_keeps_a_new_guest_off_the_degraded_host(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    """The evacuated host is empty, so spreading would put a new replica there — unless the
    host is degraded under "no-new-guests" (controller condition ``degraded``, HostStateFilter)."""
    lab, probe = cluster
    counts = {h.name: list(probe.running().values()).count(h.name) for h in lab.spec.hosts}
    empty = min(sorted(counts), key=lambda h: counts[h])
    assert counts[empty] < min(c for h, c in counts.items() if h != empty), counts
    restricted = with_policy(lab.spec, "no-new-guests", 1.0)
    try:
        with policy(lab, probe, "no-new-guests"):
            fail_component(lab, "psu", empty, "PSU1")
            probe.wait_for("restricted", lambda: components(probe, empty).get("placement") == "no-new-guests",
                           timeout=3, every=0.02)
            put_spec(probe, scaled(restricted, 4))
            probe.wait_for("4 replicas running", lambda: len(probe.running()) == 4, timeout=30)
            placed_on = probe.running().get("api-3")
            assert placed_on is not None and placed_on != empty, probe.running()
            fail_component(lab, "psu", empty, "PSU1", failed=False)
            probe.wait_for("eligible again", lambda: components(probe, empty).get("placement") == "normal", timeout=5)
    finally:
        put_spec(probe, lab.spec)
    probe.wait_for("back to 3 replicas", lambda: len(probe.running()) == 3, timeout=30)
    REPORT["no-new-guests"] = {"host": empty, "new_replica_on": placed_on}


def test_second_psu_powers_off_fences_and_fails_over(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    host = host_with_guests(probe)
    moving = sorted(g for g, h in probe.running().items() if h == host)
    with policy(lab, probe, "alert"):
        probe.wait_for("first reading", lambda: components(probe, host).get("health") == "healthy", timeout=5)
        start, t0 = time.time(), time.monotonic()
        fail_component(lab, "psu", host, "PSU1")
        probe.wait_for("degraded", lambda: components(probe, host).get("health") == "degraded", timeout=2.0, every=0.02)
        second = time.monotonic()
        state = fail_component(lab, "psu", host, "PSU2")
        assert state["power"] == "Off"
        assert lab.power_state(host) == "Off"
        probe.wait_for("failed", lambda: components(probe, host).get("health") == "failed", timeout=2.0, every=0.02)
        failed = time.monotonic() - second
        fence = probe.wait_for("fence", lambda: probe.first("fence", host, start), timeout=15)
        fenced = time.monotonic() - second
        probe.wait_for("every replica running elsewhere",
                       lambda: len(r := probe.running()) == 3 and host not in r.values(), timeout=30)
        failed_over = time.monotonic() - second
    assert "off" in json.dumps(fence).lower()
    REPORT["psu-second"] = {"host": host, "guests": moving, "failed_after_s": round(failed, 3),
                            "fenced_after_s": round(fenced, 3), "failed_over_after_s": round(failed_over, 3),
                            "fence_event": fence.get("reason")}
    for psu in ("PSU1", "PSU2"):
        fail_component(lab, "psu", host, psu, failed=False)
    lab.power_on(host)
    probe.wait_for("host up again", lambda: probe.status().get("hosts", {}).get(host) == "up", timeout=20)
    _ = t0
