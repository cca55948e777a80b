"""Host failures in a lab cluster under client load (root): BMC power-off and kill -9, a cut
link, maintenance mode, forged and replayed heartbeats. One cluster for the module (3 hosts,
3 process guests behind the balancer, failback manual); tests run in file order and each
leaves the cluster whole again."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from nonstop.core.ha.heartbeat import Heartbeat, encode
from nonstop.ha.keys import load_key
from nonstop.lab import names
from nonstop.lab.cluster import HEARTBEAT_PORT, LabCluster
from nonstop.net import netns
from nonstop.store.base import Store
from nonstop.store.operations import list_operations

from .conftest import running_cluster
from .harness import ClusterProbe, InstanceChecker, Load
from .lab_spec import lab_spec

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

GUESTS = ["api-0", "api-1", "api-2"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LabCluster, ClusterProbe]]:
    with running_cluster(lab_spec(failback="manual", stability=2.0)) as running:
        yield running


def _busiest(probe: ClusterProbe) -> str:
    running = probe.running()
    counts = {h: list(running.values()).count(h) for h in set(running.values())}
    return max(sorted(counts), key=lambda h: counts[h])


def _bring_back(lab: LabCluster, probe: ClusterProbe, host: str) -> None:
    lab.power_on(host)
    probe.wait_for(f"{host} up again", lambda: probe.status().get("hosts", {}).get(host) == "up", timeout=30)


@pytest.mark.parametrize("how", ["bmc", "kill"])
def test_host_killed_under_load(cluster: tuple[LabCluster, ClusterProbe], how: str) -> None:
    lab, probe = cluster
    victim = _busiest(probe)
    moved = sorted(g for g, h in probe.running().items() if h == victim)
    with InstanceChecker(lab, GUESTS) as checker, Load(lab.services["api"]["port"]) as load:
        time.sleep(1.0)
        killed_at = lab.fail_host(victim, how)
        dead = probe.wait_for("host-dead event", lambda: probe.first("host-dead", victim, killed_at), timeout=10)
        done = probe.wait_for("failover-done", lambda: probe.first("failover-done", victim, killed_at), timeout=20)
        probe.wait_for("every replica running", lambda: len(probe.running()) == 3, timeout=20)
        serving_since = time.time()
        # the moved guests answer through the balancer again
        probe.wait_for("moved guests serving", lambda: load.ok > 0 and all(
            g in probe.running() and probe.running()[g] != victim for g in moved), timeout=10)
        time.sleep(1.0)
    fence = probe.first("fence", victim, killed_at)
    detection = dead["at"] - killed_at
    assert detection < 1.5, f"detected after {detection:.2f}s"
    assert fence is not None and "verified-off" in fence["reason"], fence
    assert done["at"] - killed_at < 8.0, f"guests running again {done['at'] - killed_at:.2f}s after the kill"
    assert load.failures == [], f"{len(load.failures)} failed requests of {load.ok + len(load.failures)}: {load.failures[:3]}"
    assert load.ok > 50
    assert checker.max_instances == 1, checker.worst
    assert victim not in probe.running().values()
    assert lab.power_state(victim) == "Off"
    # Every moved guest started at its first attempt (a failed start waits out a back-off, and
    # repeated ones move the guest again: replicas then pile onto one host) ...
    observed = probe.observed()
    assert {g: observed[g].get("attempts") for g in moved} == {g: 0 for g in moved}, observed
    # ... and the replicas stay spread: no host holds all of them.
    assert len(set(probe.running().values())) > 1, probe.running()
    print(f"{how}: detection {detection:.3f}s, fence at {fence['at'] - killed_at:.3f}s, "
          f"failover done {done['at'] - killed_at:.3f}s, {load.ok} requests, 0 failed; serving since {serving_since - killed_at:.2f}s")
    _bring_back(lab, probe, victim)
    # failback is manual: the controller reports the host ready and moves nothing
    check = probe.wait_for("failback check", lambda: [e for e in probe.events(killed_at)
                                                      if e["kind"] == "failback-check" and e["subject"] == victim
                                                      and e.get("ready")], timeout=15)
    assert "manual" in check[0]["reason"]
    assert victim not in probe.running().values()


def test_cut_link_is_link_degraded_not_failover(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    host = "h2"
    start = time.time()
    lab.cut_link(host, "eth1")
    try:
        event = probe.wait_for("link-degraded", lambda: probe.first("link-degraded", host, start), timeout=5)
        assert "sw1" in event["down_links"]
        time.sleep(2.0)
        assert probe.first("host-dead", host, start) is None
        assert probe.first("host-state", host, start)["after"] == "link-degraded"
        assert probe.status()["hosts"][host] == "link-degraded"
    finally:
        lab.restore_link(host, "eth1")
    probe.wait_for("host up again", lambda: probe.status().get("hosts", {}).get(host) == "up", timeout=10)
    assert len(probe.running()) == 3


def test_forged_and_replayed_heartbeats_are_dropped(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    before = probe.status()["heartbeats"]
    key = load_key(lab.key_file)
    target = (names.switch_address(0, names.CTL_OCTET), HEARTBEAT_PORT)
    now_ns = time.monotonic_ns()
    forged = [encode(Heartbeat(lab.cluster, "h3", "sw0", 1, i, now_ns, "ready", b"\0" * 16), os.urandom(32))
              for i in range(20)]
    # A replay: an authentic heartbeat of an old incarnation of h3, sent twice (both too old).
    replay = encode(Heartbeat(lab.cluster, "h3", "sw0", 1, 1, now_ns, "ready", b"\0" * 16), key)

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram in forged:
                sock.sendto(datagram, target)
            for _ in range(10):
                sock.sendto(replay, target)

    with netns.inside(names.host_ns(lab.cluster, "h3")) as t:
        t.call(send)
    after = probe.wait_for("counters", lambda: (s := probe.status()["heartbeats"]).get("forged", 0)
                           >= before.get("forged", 0) + 20 and s, timeout=5)
    assert after.get("forged", 0) - before.get("forged", 0) >= 20
    assert after.get("replayed", 0) - before.get("replayed", 0) >= 10
    assert probe.status()["hosts"]["h3"] == "up"


def test_maintenance_evacuates_and_is_never_failed(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    lab, probe = cluster
    host = next(h for h in ("h1", "h2", "h3") if h in probe.running().values())
    start = time.time()
    probe.maintenance(host, enter=True)
    with Load(lab.services["api"]["port"]) as load:
        probe.wait_for("evacuated", lambda: probe.first("evacuated", host, start), timeout=20)
        probe.wait_for("all running elsewhere", lambda: len(r := probe.running()) == 3 and host not in r.values(),
                       timeout=20)
    assert load.failures == [], load.failures[:3]
    assert probe.status()["hosts"][host] == "maintenance"
    # a host in maintenance that goes silent is never treated as failed
    lab.fail_host(host, "kill")
    time.sleep(2.0)
    assert probe.first("host-dead", host, start) is None
    probe.maintenance(host, enter=False)
    # it is silent now (its agent was killed): leaving maintenance, it becomes dead and is fenced
    probe.wait_for("fenced after maintenance", lambda: probe.first("fence", host, start), timeout=15)
    _bring_back(lab, probe, host)


@pytest.mark.slow
def test_no_false_failover_under_cpu_saturation(cluster: tuple[LabCluster, ClusterProbe]) -> None:
    """Both cores saturated by bounded burners (2 per core, nice 0, like the load a tenant makes)
    for 2 minutes, as the issue asks (NONSTOP_CPU_SATURATION_SECONDS overrides, e.g. for a quick run)."""
    import subprocess
    import sys

    lab, probe = cluster
    seconds = float(os.environ.get("NONSTOP_CPU_SATURATION_SECONDS", "120"))
    start = time.time()
    burn = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        while time.time() - start < seconds:
            bad = [e for e in probe.events(start) if e["kind"] in ("host-dead", "fence", "guest-moved")
                   or (e["kind"] == "host-state" and e["after"] in ("suspect", "dead"))]
            assert bad == [], bad
            time.sleep(2.0)
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    events = probe.events(start)
    assert [e for e in events if e["kind"] == "host-state" and e["after"] in ("suspect", "dead")] == []
    assert [e for e in events if e["kind"] in ("host-dead", "guest-moved")] == []
    assert len(probe.running()) == 3


@pytest.mark.parametrize("gap", ["at-once", "past-self-fence-timeout"])
def test_controller_restart_takes_over_without_self_fencing(cluster: tuple[LabCluster, ClusterProbe], gap: str) -> None:
    """kill -9 of the controller and a restart: the new one takes over its own leader record at
    once — or starts only after the agents' self-fence timeout (a successor slow to start on a
    loaded machine, or a standby taking over): the dead leader's record is gone by then (its
    lease is under half the timeout) and agents count no silence while nobody leads. Either way
    no agent fences itself, nothing moves, no request fails."""
    lab, probe = cluster
    sft = lab.spec.policies.ha.self_fence_timeout
    delay = 0.0 if gap == "at-once" else sft + 2.0
    start = time.time()
    fences_before = _self_fences(lab)
    old_pid = probe.status()["pid"]
    with Load(lab.services["api"]["port"]) as load:
        lab.restart_controller(kill=True, delay=delay)
        probe.wait_for("new controller leading", lambda: probe.status().get("pid") not in (None, old_pid), timeout=30)
        probe.wait_for("every host up", lambda: set(probe.status().get("hosts", {}).values()) == {"up"}, timeout=30)
        time.sleep(1.0)
    # It takes its own record over at once, or (slow start on a loaded machine) after the old lease ended.
    takeover = probe.first("controller-takeover", None, start) or probe.first("controller-started", None, start)
    assert takeover is not None
    print(f"controller back {takeover['at'] - start:.2f}s after the kill ({takeover['kind']}; restarted after "
          f"{delay:.1f}s, self-fence timeout {sft}s)")
    assert takeover["at"] - start >= delay
    assert _self_fences(lab) == fences_before
    assert [e for e in probe.events(start) if e["kind"] in ("host-dead", "guest-moved")] == []
    assert load.failures == [], load.failures[:3]
    assert len(probe.running()) == 3


def _self_fences(lab: LabCluster) -> dict[str, int]:
    return {h: (lab.run_dir / f"agent-{h}.log").read_text().count("SELF-FENCE") for h in ("h1", "h2", "h3")}


def _op_of(probe: ClusterProbe, host: str, since: float) -> dict[str, object] | None:
    async def read(store: Store) -> list[dict[str, object]]:
        return [{**r.body, "op_id": r.id, "step": r.step}
                for r in await list_operations(store, probe.lab.cluster, "failover")]

    ops = [op for op in probe._run(read) if op.get("host") == host and float(op.get("detected_at", 0)) >= since]
    return max(ops, key=lambda op: float(op["detected_at"])) if ops else None  # type: ignore[arg-type]


@pytest.mark.parametrize("step", ["fenced", "moved"])
def test_controller_killed_mid_failover_resumes(cluster: tuple[LabCluster, ClusterProbe], step: str) -> None:
    """kill -9 of the controller in the middle of a failover — right after the fence (``fenced``:
    nothing reassigned yet) or while the guests are being restarted (``moved``). The controller
    runs with ``--step-pause 1`` so the kill lands at that step; its successor must resume the
    persisted op and finish it with never two instances, no agent may fence itself and no request
    may fail — also when the successor is slower than the self-fence timeout (a loaded machine):
    the dead controller's leader record lives on a lease under half that timeout, and agents do
    not count silence while no controller leads (docs/ha.md)."""
    lab, probe = cluster
    sft = lab.spec.policies.ha.self_fence_timeout
    old_pid = probe.status()["pid"]
    lab.controller_args = ["--step-pause", "1"]
    try:
        lab.restart_controller(kill=True)
        probe.wait_for("pausing controller leading", lambda: probe.status().get("pid") not in (None, old_pid), timeout=60)
        probe.wait_for("every host up", lambda: set(probe.status().get("hosts", {}).values()) == {"up"}, timeout=60)
    finally:
        lab.controller_args = []
    pausing_pid = probe.status()["pid"]
    victim = _busiest(probe)
    fences_before = _self_fences(lab)
    with InstanceChecker(lab, GUESTS) as checker, Load(lab.services["api"]["port"]) as load:
        time.sleep(0.5)
        killed_at = lab.fail_host(victim, "bmc")
        op = probe.wait_for(f"failover at step {step}", lambda: (o := _op_of(probe, victim, killed_at - 1))
                            and o["step"] == step and o, timeout=15, every=0.05)
        ctl_killed_at = time.time()
        lab.restart_controller(kill=True)  # kill -9; the successor has no step pause
        resumed = probe.wait_for("failover-resumed", lambda: probe.first("failover-resumed", victim, ctl_killed_at),
                                 timeout=30)
        takeover = probe.first("controller-started", None, ctl_killed_at)
        done = probe.wait_for("failover-done", lambda: probe.first("failover-done", victim, ctl_killed_at), timeout=30)
        probe.wait_for("every replica running", lambda: len(probe.running()) == 3, timeout=30)
        probe.wait_for("every replica in the balancer", lambda: len(probe.backends("api")) == 3, timeout=10)
        time.sleep(1.0)
    final = _op_of(probe, victim, killed_at - 1)
    print(f"{step}: op {op['op_id']} at {step} when killed; successor leading {takeover['at'] - ctl_killed_at:.2f}s "
          f"after the kill (self-fence timeout {sft}s), resumed {resumed['at'] - ctl_killed_at:.2f}s, "
          f"done {done['at'] - ctl_killed_at:.2f}s")
    assert probe.status()["pid"] not in (old_pid, pausing_pid)
    assert final is not None and final["op_id"] == op["op_id"] and final["step"] == "done", final
    assert f"step {step}" in resumed["reason"]
    assert done["not_running"] == [], done
    # one op for this outage: the successor did not start a second failover of the victim
    assert [e for e in probe.events(killed_at) if e["kind"] == "host-dead" and e["subject"] == victim][1:] == []
    assert checker.max_instances == 1, checker.worst
    assert victim not in probe.running().values()
    _bring_back(lab, probe, victim)
    assert _self_fences(lab) == fences_before
    assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:3]}"
