"""Helpers for the rolling-patch lab tests: run ``nonstop patch`` in the cluster's ctl namespace
(where the balancers' admin API is reachable), read the current rollout (the newest
``patch-rollout`` operation) and host levels, ask the controller to take a host out of
maintenance (an intent: the controller is the one writer of ``hosts/*/desired``)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from cluster.harness import ClusterProbe  # tests/cluster (a rootdir package)

from nonstop.core.patching.steps import KIND, Rollout
from nonstop.core.spec import ClusterSpec
from nonstop.lab import names
from nonstop.lab.cluster import LabCluster
from nonstop.store import intents, keys, operations


def tolerant(spec: ClusterSpec, heartbeat_interval: float = 0.3) -> ClusterSpec:
    """``spec`` with heartbeats every ``heartbeat_interval`` s instead of the lab's 100 ms: the
    failure detector then tolerates about 1.3 s of silence instead of about 0.45 s (phi 8, a
    pause of two intervals accepted). A rolling patch's CPU spikes (a live migration under TCG,
    the agent's re-exec, the self-test boot) on a machine loaded by others starved heartbeats
    for longer than 0.45 s and hosts that were fine were fenced; that is the detector's tuning
    on this machine, not something the patch test is about."""
    ha = spec.policies.ha.model_copy(update={"heartbeat_interval": heartbeat_interval})
    return spec.model_copy(update={"policies": spec.policies.model_copy(update={"ha": ha})})


def patch_argv(lab: LabCluster, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "nonstop.cli.main", "patch", "--store", lab.store_url, "--cluster", lab.cluster,
            "--netns", names.ctl_ns(lab.cluster), "--json"]
    for service, info in lab.services.items():
        argv += ["--balancer", f"{service}={info['admin']}"]
    return argv + list(args)


def run_patch(lab: LabCluster, *args: str, timeout: float = 150.0) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(patch_argv(lab, *args), capture_output=True, timeout=timeout, text=True)
    out = proc.stdout.strip()
    start = out.find("{")
    doc = json.loads(out[start:]) if start >= 0 else {}
    return proc.returncode, doc, proc.stderr + out


def start_patch(lab: LabCluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(patch_argv(lab, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rollout(probe: ClusterProbe) -> dict[str, Any]:
    """The current rollout (``Rollout.to_dict``), ``{}`` when none was stored."""
    async def read(store: Any) -> dict[str, Any]:
        records = await operations.list_operations(store, probe.lab.cluster, KIND)
        return Rollout.from_body(records[-1].header, records[-1].body).to_dict() if records else {}

    return probe._run(read)


def leave_maintenance(probe: ClusterProbe, host: str, reason: str = "test cleanup") -> None:
    """Ask the controller to take ``host`` out of maintenance, and wait until it says done."""
    async def ask(store: Any) -> str | None:
        intent = await intents.submit(store, probe.lab.cluster, "maintenance", requester="test", reason=reason,
                                      host=host, enter=False)
        outcome = await intents.wait_outcome(store, probe.lab.cluster, intent.id, timeout=15.0)
        return outcome.status if outcome is not None else None

    status = probe._run(ask)
    assert status == "done", f"leaving maintenance on {host}: {status}"
    probe.wait_for(f"{host} up", lambda: probe.status()["hosts"][host] == "up", timeout=15)


def levels(probe: ClusterProbe) -> dict[str, str | None]:
    async def read(store: Any) -> dict[str, str | None]:
        out = {}
        for host in probe.lab.spec.hosts:
            obs = await store.get_json(keys.host_observed(probe.lab.cluster, host.name)) or {}
            out[host.name] = obs.get("patch_level")
        return out

    return probe._run(read)


def host_desired(probe: ClusterProbe, host: str) -> dict[str, Any]:
    return probe._run(lambda s: s.get_json(keys.host_desired(probe.lab.cluster, host))) or {}


FAILOVER_KINDS = ("host-dead", "fence", "failover-resumed")


def wait_service(probe: ClusterProbe, replicas: int = 3, timeout: float = 30.0) -> None:
    """Until the controller has every replica in the balancer (its stored list), plus a second for
    the balancer's first health checks."""
    import time

    def ready() -> bool:
        value = probe._run(lambda s: s.get_json(keys.service_backends(probe.lab.cluster, "api")))
        items = value.get("backends", value) if isinstance(value, dict) else value
        return isinstance(items, list) and len(items) >= replicas

    probe.wait_for("every replica in the balancer", ready, timeout=timeout)
    time.sleep(1.0)


def timeline(probe: ClusterProbe, since: float, limit: int = 80) -> list[str]:
    """The cluster's events since ``since`` (for assertion messages: what happened meanwhile)."""
    return [f"{e['at'] - since:7.2f} {e['kind']} {e['subject']}: {e.get('reason', '')}"[:200]
            for e in probe.events(since)][-limit:]
