"""Rolling patches on a real lab cluster (root): 3 hosts, process guests behind the balancer,
the controller, agents, BMCs. One cluster for the module; the tests run in file order and each
leaves every host out of maintenance.

VMs are not used here: the lab cluster runs process guests (live migration of VMs through the
store is tested in tests/agent/test_agent_vm.py); process guests are moved cold (drained first)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster.conftest import running_cluster
from cluster.harness import ClusterProbe, Load
from cluster.lab_spec import lab_spec

from nonstop.lab import names
from nonstop.lab.cluster import LabCluster

from .lab import FAILOVER_KINDS, host_desired, levels, rollout, run_patch, start_patch, wait_service

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]
HOSTS = ["h1", "h2", "h3"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LabCluster, ClusterProbe]]:
    # self-fence 10 s: a killed controller's successor waits out its 5 s leader lease; with the
    # lab's usual 3 s every agent would self-fence meanwhile (an HA matter, not the patch's)
    with running_cluster(lab_spec(failback="auto", stability=1.0, self_fence=10.0)) as running:
        yield running


def _no_failover(probe: ClusterProbe, since: float) -> None:
    bad = [e for e in probe.events(since) if e["kind"] in FAILOVER_KINDS
           or (e["kind"] == "host-state" and e.get("after") in ("suspect", "dead"))]
    assert bad == [], bad


def test_rolling_patch_under_load(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    wait_service(probe)
    start = time.time()
    with Load(lab.services["api"]["port"]) as load:
        time.sleep(0.5)
        code, doc, text = run_patch(lab, "--to", "L2")
        time.sleep(0.5)
    assert code == 0, text[-3000:]
    assert doc["complete"] and doc["status"] == "complete", doc
    assert levels(probe) == {h: "L2" for h in HOSTS}
    assert [h["level_after"] for h in doc["hosts"]] == ["L2"] * 3
    assert load.failures == [], [(round(t - start, 2), e) for t, e in load.failures[:5]]
    assert load.ok > 50
    moved = [m for h in doc["hosts"] for m in h["moves"]]
    assert moved and all(m["how"] == "cold" for m in moved)  # process guests
    _no_failover(probe, start)
    assert len(probe.running()) == 3
    assert all(host_desired(probe, h).get("state") == "up" for h in HOSTS)


def test_failing_patch_stops_the_rollout_then_resume_finishes(cluster: tuple[LabCluster, ClusterProbe],
                                                              tmp_path: Path) -> None:
    lab, probe = cluster
    marker = tmp_path / "h2-broken"
    marker.write_text("x")
    command = (f'if [ "$NONSTOP_HOST" = h2 ] && [ -e {marker} ]; then echo "disk full on $NONSTOP_HOST" >&2; '
               'exit 3; fi; printf %s "$NONSTOP_PATCH_TARGET" > "$NONSTOP_PATCH_LEVEL_FILE"')
    wait_service(probe)
    start = time.time()
    with Load(lab.services["api"]["port"]) as load:
        code, doc, text = run_patch(lab, "--to", "L3", "--command", command)
        assert code == 1, text[-3000:]
        by_host = {h["host"]: h for h in doc["hosts"]}
        assert by_host["h1"]["step"] == "done" and by_host["h1"]["level_after"] == "L3"
        assert by_host["h2"]["step"] == "failed" and by_host["h2"]["failed_step"] == "patch"
        assert "exit code 3" in by_host["h2"]["error"] and "disk full on h2" in by_host["h2"]["output"]
        assert by_host["h3"]["step"] == "pending" and by_host["h3"]["level_after"] == "L2"
        assert host_desired(probe, "h2")["state"] == "maintenance"
        assert probe.status()["hosts"]["h2"] == "maintenance"
        assert len(probe.running()) == 3 and "h2" not in probe.running().values()
        # a new rollout is refused while this one is failed
        code2, _doc, text2 = run_patch(lab, "--to", "L9")
        assert code2 != 0 and "resume or abort" in text2
        marker.unlink()
        code, doc, text = run_patch(lab, "--resume")
    assert code == 0, text[-3000:]
    assert doc["complete"] and levels(probe) == {h: "L3" for h in HOSTS}
    assert load.failures == [], load.failures[:5]
    _no_failover(probe, start)


def test_patcher_and_controller_killed_mid_rollout_resume(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    wait_service(probe)
    start = time.time()
    with Load(lab.services["api"]["port"]) as load:
        proc = start_patch(lab, "--to", "L4")
        probe.wait_for("h2 under way", lambda: rollout(probe).get("target") == "L4"
                       and rollout(probe)["hosts"]["h2"]["step"] not in ("pending",), timeout=90)
        os.kill(proc.pid, 9)
        proc.wait()
        killed_at = rollout(probe)["hosts"]["h2"]["step"]
        lab.restart_controller(kill=True)
        code, doc, text = run_patch(lab, "--resume")
    assert code == 0, text[-3000:]
    assert doc["complete"] and levels(probe) == {h: "L4" for h in HOSTS}, doc
    assert load.failures == [], load.failures[:5]
    h2 = next(h for h in doc["hosts"] if h["host"] == "h2")
    assert killed_at in h2["durations"]
    _no_failover(probe, start)


def test_hanging_patch_times_out_and_abort_leaves_the_cluster_serving(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    code, doc, text = run_patch(lab, "--to", "L5", "--hosts", "h3", "--simulate", "hang", "--timeout", "2")
    assert code == 1, text[-3000:]
    h3 = doc["hosts"][0]
    assert h3["step"] == "failed" and "timed out" in h3["error"]
    code, doc, text = run_patch(lab, "--abort")
    assert doc["status"] == "aborted", text[-2000:]
    assert host_desired(probe, "h3")["state"] == "maintenance"  # the operator decides about a broken host
    assert len(probe.running()) == 3
    probe.put_json(f"/nonstop/{lab.cluster}/hosts/h3/desired", {"state": "up", "reason": "test cleanup"})
    probe.wait_for("h3 up", lambda: probe.status()["hosts"]["h3"] == "up", timeout=15)


def _update(lab: LabCluster, *args: str) -> tuple[int, dict[str, Any], str]:
    import json
    import subprocess

    argv = [sys.executable, "-m", "nonstop.cli.main", "rolling-update", "api", "--store", lab.store_url,
            "--cluster", lab.cluster, "--netns", names.ctl_ns(lab.cluster), "--json",
            "--balancer", f"api={lab.services['api']['admin']}", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    return proc.returncode, json.loads(out[out.find("{"):]) if "{" in out else {}, proc.stderr + out


def test_rolling_guest_update_then_a_broken_version_rolls_back(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    wait_service(probe)
    good = f"{sys.executable} -m nonstop.workload --port 8080"
    with Load(lab.services["api"]["port"]) as load:
        code, doc, text = _update(lab, "--command", good)
        assert code == 0, text[-3000:]
        assert doc["phase"] == "done" and doc["replaced"] == ["api-0", "api-1", "api-2"]
        desired = probe.desired()
        assert sorted(desired) == ["api-0", "api-1", "api-2"]  # the surge replica is gone
        assert all(d["command"] == good.split() for d in desired.values())
        probe.wait_for("all running", lambda: len(probe.running()) == 3, timeout=20)
        wait_service(probe)
        code, doc, text = _update(lab, "--command", "sh -c 'echo broken; sleep 600'", "--health-timeout", "6")
        assert code == 1, text[-3000:]
        assert doc["phase"] == "rolled-back" and "not healthy" in doc["reason"], doc
        desired = probe.desired()
        assert sorted(desired) == ["api-0", "api-1", "api-2"]
        assert all(d["command"] == good.split() for d in desired.values())
        probe.wait_for("all running", lambda: len(probe.running()) == 3, timeout=20)
    assert load.failures == [], load.failures[:5]
