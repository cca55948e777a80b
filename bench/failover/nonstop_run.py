"""nonstop's side of bench/failover: host kills in a lab cluster under client load.

A ``LabCluster`` of 3 hosts (two NICs each, heartbeats every 100 ms on both), 6 process guests
behind nonstop's balancer and one VM (QEMU, TCG), failback manual. Each round: kill the VM's host
through its BMC (Redfish ForceOff: every process of the host dies, QEMU included), then read the
controller's events, the client's answers and the VM's page:

- detection: the controller's ``host-dead`` event − the kill;
- fence: the ``fence`` event (Redfish ForceOff verified Off) − the kill;
- guests running: ``failover-done`` (every moved guest observed running on its new host) − the kill;
- serving again: the first answer *through the balancer* from the last of the moved guests
  on its new host − the kill;
- VM running / serving again: QEMU observed running on another host / its web page answers
  from the out namespace with a new boot id (a cold restart from the shared disk);
- failed requests: client errors from the kill to the end of the round.

Then the host is powered on again (it rejoins empty) before the next round.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

from bench.failover.client import Client
from nonstop.core.spec import ClusterSpec
from nonstop.lab.cluster import LabCluster
from nonstop.store import keys, open_store
from nonstop.store.cluster_records import read_guests
from nonstop.store.events import read_events
from nonstop.store.records import EventRecord, LeaderRecord, ServiceBackends, read_or_none


def bench_spec(cluster: str, replicas: int = 6, vm_replicas: int = 0) -> ClusterSpec:
    groups: list[dict[str, Any]] = [
        {"name": "api", "kind": "process", "replicas": replicas, "vcpus": 1, "memory": "64MiB",
         "nics": [{"network": "prod"}], "port": 8080, "spread": "soft"}]
    if vm_replicas:
        groups.append({"name": "web", "kind": "vm", "replicas": vm_replicas, "vcpus": 1, "memory": "256MiB",
                       "nics": [{"network": "prod"}], "port": 80, "spread": "soft", "priority": 200})
    return ClusterSpec.model_validate({
        "cluster": cluster, "switches": ["sw0", "sw1"],
        "hosts": [{"name": f"h{i}", "cpus": 2, "memory": "4GiB", "disk": "20GiB",
                   "nics": [{"name": "eth0", "switch": "sw0"}, {"name": "eth1", "switch": "sw1"}]} for i in (1, 2, 3)],
        "networks": [{"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1",
                      "uplink": "eth0"}],
        "guests": groups,
        "services": [{"name": "api", "listen": "127.0.0.1:0", "backends": {"group": "api", "port": 8080},
                      "health": {"interval": "500ms", "timeout": "300ms", "rise": 1, "fall": 2},
                      "connect_timeout": "300ms", "retries": 3}],
        "policies": {"ha": {"heartbeat_interval": "100ms", "self_fence_timeout": 3.0, "failback": "manual"}},
    })


class Store:
    def __init__(self, url: str, cluster: str) -> None:
        self.url, self.cluster = url, cluster

    def _run(self, fn: Any) -> Any:
        async def go() -> Any:
            store = open_store(self.url)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def events(self) -> list[EventRecord]:
        return self._run(lambda s: read_events(s, self.cluster))

    def verdict(self, host: str) -> str | None:
        """The leading controller's liveness verdict on ``host`` (None while no controller leads)."""
        leader = self._run(lambda s: read_or_none(s, keys.leader(self.cluster), LeaderRecord))
        return leader.hosts.get(host) if leader is not None else None

    def running(self) -> dict[str, str]:
        async def read(store: Any) -> dict[str, str]:
            guests = await read_guests(store, self.cluster)
            return {g: r.desired.host for g, r in guests.items()
                    if r.desired is not None and r.observed is not None and r.observed.state == "running"
                    and r.observed.host == r.desired.host}

        return self._run(read)


def wait(what: str, predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def vm_page(cluster: str, ip: str) -> dict[str, str] | None:
    from nonstop.drivers.qemu_testlab import fetch_in, parse_page
    from nonstop.lab import names

    try:
        status, body = fetch_in(names.out_ns(cluster), ip, "/", timeout=1.0)
    except OSError:
        return None
    return parse_page(body) if status == 200 else None


def run(kills: int = 10, replicas: int = 6, progress: Any = print, vms: int = 1) -> dict[str, Any]:
    cluster = "bf" + os.urandom(2).hex()
    spec = bench_spec(cluster, replicas, vms)
    with tempfile.TemporaryDirectory(prefix="nonstop-bench-") as tmp:
        lab = LabCluster(spec, f"sqlite:///{tmp}/state.db", drivers="process,qemu" if vms else "process")
        store = Store(lab.store_url, cluster)
        rounds = []
        try:
            lab.start(lambda text: progress(f"  nonstop: {text}"))
            wait("all guests running", lambda: len(store.running()) == replicas + vms, 120)
            vm_ip = None
            if vms:
                async def desired(s: Any) -> Any:
                    return (await read_guests(s, cluster))["web-0"].desired

                vm_ip = store._run(desired).vnics[0].address.split("/")[0]
                wait("the VM serving", lambda: vm_page(cluster, vm_ip), 120)
            wait("balancer holds every replica", lambda: len(getattr(store._run(
                lambda s: read_or_none(s, keys.service_backends(cluster, "api"), ServiceBackends)), "backends",
                ())) == replicas, 60)
            client = Client(lab.services["api"]["port"]).start()
            last_end = time.time()
            try:
                time.sleep(2.0)
                for i in range(kills):
                    if vms:
                        wait("the VM running", lambda: "web-0" in store.running(), 120)
                    running = store.running()
                    counts = {h: list(running.values()).count(h) for h in set(running.values())}
                    # the VM's host when there is a VM (both kinds measured every round), else the busiest
                    victim = running["web-0"] if vms else max(sorted(counts), key=lambda h: counts[h])
                    moved = sorted(g for g, h in running.items() if h == victim and g.startswith("api-"))
                    boot = (vm_page(cluster, vm_ip) or {}).get("boot_id") if vm_ip else None
                    # what moved guests between the kills (not failovers): how replicas came to share a host
                    between = [[e.kind, e.subject, e.reason[:120]] for e in store.events()
                               if e.at >= last_end and (e.kind in ("guest-migrating", "evacuated", "unplaceable",
                                                                         "component-policy", "maintenance", "failback")
                                                           or (e.kind == "guest-moved"
                                                               and not e.reason.startswith("failover of")))]
                    spread = {h: sorted(g for g, gh in running.items() if gh == h) for h in sorted(set(running.values()))}
                    killed = lab.fail_host(victim, "bmc")
                    try:
                        done = wait("failover-done", lambda v=victim, k=killed: next(
                            (e for e in store.events() if e.kind == "failover-done" and e.subject == v
                             and e.at >= k), None), 60)
                        serving = {g: wait(f"{g} serving", lambda g=g, v=victim, k=killed: client.first_answer(k, g, v),
                                           60) for g in moved}
                    except RuntimeError as exc:
                        # A round that does not recover is a result, not a crash: kept with the
                        # event log of the kill, and the run goes on.
                        row = {"round": i + 1, "host": victim, "guests": len(moved), "error": str(exc),
                               "spread_before": spread, "moves_between": between,
                               "failed_requests": client.failures_between(killed, time.time()),
                               "events": [[round(e.at - killed, 3), e.kind, e.subject, e.reason[:160]]
                                          for e in store.events() if e.at >= killed]}
                        rounds.append(row)
                        progress(f"  nonstop round {i + 1}: FAILED {exc}: {row['events']}")
                        lab.power_on(victim)
                        wait(f"{victim} up", lambda v=victim: store.verdict(v) == "up", 60)
                        wait("every guest running", lambda: len(store.running()) == replicas + vms, 120)
                        last_end = time.time()
                        continue
                    vm_running = vm_serving = None
                    vm_error = None
                    if vm_ip:
                        try:
                            wait("VM running elsewhere", lambda v=victim: store.running().get("web-0") not in (None, v), 60)
                            vm_running = time.time() - killed
                            wait("VM serving again",
                                 lambda b=boot: (p := vm_page(cluster, vm_ip)) and p.get("boot_id") != b, 90)
                            vm_serving = time.time() - killed
                        except RuntimeError as exc:  # recorded, not fatal: the round still counts
                            vm_error = str(exc)
                    time.sleep(1.0)
                    events = [e for e in store.events() if e.at >= killed and e.subject == victim]
                    dead = next(e for e in events if e.kind == "host-dead")
                    fence = next(e for e in events if e.kind == "fence")
                    end = time.time()
                    row = {
                        "round": i + 1, "host": victim, "guests": len(moved),
                        "detection_s": round(dead.at - killed, 3),
                        "fence_s": round(fence.at - killed, 3),
                        "fence_call_s": fence.detail("seconds"),
                        "guests_running_s": round(done.at - killed, 3),
                        "serving_again_s": round(max(serving.values()) - killed, 3) if serving else None,
                        "vm_running_s": round(vm_running, 3) if vm_running is not None else None,
                        "vm_serving_again_s": round(vm_serving, 3) if vm_serving is not None else None,
                        "vm_error": vm_error,
                        "failed_requests": client.failures_between(killed, end),
                        "requests": sum(1 for t, _, _ in client.answers if killed <= t <= end),
                        "spread_before": spread, "moves_between": between,
                    }
                    # a host declared dead that was not killed: a false detection (it gets fenced)
                    collateral = sorted({e.subject for e in store.events() if e.at >= last_end
                                         and e.kind == "host-dead" and e.subject != victim})
                    row["falsely_dead"] = collateral
                    rounds.append(row)
                    progress(f"  nonstop round {i + 1}: {row}")
                    lab.power_on(victim)
                    for host in collateral:  # fenced by mistake: back on, and wait until it is up
                        lab.power_on(host)
                        wait(f"{host} up", lambda v=host: store.verdict(v) == "up", 30)
                    wait(f"{victim} up", lambda v=victim: store.verdict(v) == "up", 30)
                    time.sleep(1.0)
                    last_end = end
            finally:
                client.stop()
            total_failures = len(client.failures)
            total_answers = len(client.answers)
        finally:
            lab.stop()
    return {"rounds": rounds, "requests": total_answers, "failed_requests_total": total_failures}
