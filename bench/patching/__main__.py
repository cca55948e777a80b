"""Benchmark: roll a patch over a 3-host lab cluster while a client loads the service.

What it measures, per variant, in ONE run on one lab cluster (three process guests behind the
balancer and one VM — the built-in image under TCG — the controller, agents in their namespaces):
- total rollout time and the median of each step over the hosts (drain, migrate = evacuate,
  patch, verify = await-agent + postcheck, failback, and the rest); for the VM's host also its
  evacuate and failback (the live migration out and back) on their own;
- failed requests (target 0) and the client's p50/p99 latency before the rollout (10 s) and during it;
- the VM: its boot ids seen on its page during the rollout (target: one, unchanged), and its page's
  failed fetches (from the lab's out namespace).

Variants, side by side:
- ``nonstop``: ``nonstop patch`` as shipped (maintenance, drain through the balancer's admin API,
  moves, agent patch, post-check, failback);
- ``no-drain``: the same rollout with the balancer not told (no admin API): guests are moved
  without draining first — the naive "standby each node in turn" that relies on the balancer's
  health checks and retries alone (Pacemaker's rolling upgrade moves resources the same way; it
  has no balancer drain).

The client: one thread, a new connection per GET (like tests/cluster/harness.Load), 5 ms pause.
Results: bench/results/patching.json and .md. The machine is shared: figures are noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from cluster.harness import ClusterProbe  # noqa: E402
from cluster.lab_spec import lab_spec  # noqa: E402
from patching.lab import tolerant  # noqa: E402  (tests/patching/lab.py: heartbeats every 300 ms)

from nonstop.drivers.qemu_testlab import PagePoller, fetch_in, parse_page  # noqa: E402
from nonstop.lab import names  # noqa: E402
from nonstop.lab.cluster import LabCluster  # noqa: E402
from nonstop.store import keys  # noqa: E402
from nonstop.store.records import ServiceBackends, read_or_none  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VM = {"name": "web", "kind": "vm", "replicas": 1, "vcpus": 1, "memory": "256MiB", "nics": [{"network": "prod"}],
      "port": 80, "spread": "soft", "priority": 200}


class Client:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            ok = True
            try:
                with urllib.request.urlopen(self.url, timeout=10) as resp:  # noqa: S310 (lab forwarder)
                    resp.read()
            except Exception:
                ok = False
            self.samples.append((time.time(), time.perf_counter() - t0, ok))
            time.sleep(0.005)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def window(self, start: float, end: float) -> dict[str, Any]:
        rows = [s for s in self.samples if start <= s[0] <= end]
        lat = sorted(s[1] * 1000 for s in rows if s[2])
        return {
            "requests": len(rows), "failed": sum(1 for s in rows if not s[2]),
            "p50_ms": round(statistics.median(lat), 2) if lat else None,
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None,
        }


def wait_service(probe: ClusterProbe, lab: LabCluster) -> None:
    def ready() -> bool:
        stored = probe._run(lambda s: read_or_none(s, keys.service_backends(lab.cluster, "api"), ServiceBackends))
        return stored is not None and len(stored.backends) >= 3

    probe.wait_for("service", ready, timeout=30)
    time.sleep(1.0)


def vm_page(lab: LabCluster, ip: str) -> dict[str, str] | None:
    try:
        status, body = fetch_in(names.out_ns(lab.cluster), ip, "/", timeout=2.0)
    except OSError:
        return None
    return parse_page(body) if status == 200 else None


def rollout(lab: LabCluster, level: str, drain: bool) -> tuple[int, dict[str, Any], float]:
    argv = [sys.executable, "-m", "nonstop.cli.main", "patch", "--store", lab.store_url, "--cluster", lab.cluster,
            "--netns", names.ctl_ns(lab.cluster), "--json", "--to", level]
    if drain:
        argv += ["--balancer", f"api={lab.services['api']['admin']}"]
    t0 = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    return proc.returncode, json.loads(out[out.find("{"):]) if "{" in out else {}, time.time() - t0


STEP_GROUPS = {"drain": ["drain"], "migrate": ["evacuate"], "patch": ["patch"],
               "verify": ["await-agent", "postcheck"], "failback": ["failback"],
               "maintenance": ["enter-maintenance", "exit-maintenance"], "precheck": ["precheck"]}


def step_medians(doc: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, steps in STEP_GROUPS.items():
        values = [sum(h["durations"].get(s, 0.0) for s in steps) for h in doc.get("hosts", [])]
        out[name] = round(statistics.median(values), 3) if values else 0.0
    return out


def main() -> None:
    rounds = int(os.environ.get("NONSTOP_BENCH_ROUNDS", "2"))
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores",
                               "rounds": rounds, "variants": {}, "load_average_at_start": os.getloadavg()[0]}
    spec = tolerant(lab_spec(failback="auto", stability=1.0, self_fence=10.0, extra_groups=[VM]))
    with tempfile.TemporaryDirectory(prefix="nonstop-bench-") as tmp:
        lab = LabCluster(spec, f"sqlite:///{os.path.join(tmp, 'state.db')}", drivers="process,qemu")
        try:
            lab.start(lambda t: None)
            probe = ClusterProbe(lab)
            probe.wait_for("guests", lambda: len(probe.running()) == 4, timeout=90)
            wait_service(probe, lab)
            ip = probe.desired()["web-0"]["vnics"][0]["address"].split("/")[0]
            probe.wait_for("the VM's page", lambda: vm_page(lab, ip), timeout=180, every=0.5)
            client = Client(lab.services["api"]["port"])
            client.start()
            level = 1
            for r in range(rounds):
                for variant, drain in (("nonstop", True), ("no-drain", False)):
                    wait_service(probe, lab)
                    boot_before = (probe.wait_for("the VM's page", lambda: vm_page(lab, ip), timeout=120) or {})
                    vm_host = probe.running().get("web-0")
                    before_start = time.time()
                    time.sleep(10.0)
                    level += 1
                    poller = PagePoller(names.out_ns(lab.cluster), ip, interval=0.1, timeout=3.0).start()
                    t0 = time.time()
                    code, doc, seconds = rollout(lab, f"L{level}", drain)
                    t1 = time.time()
                    poller.stop()
                    home = next((h for h in doc.get("hosts", []) if h["host"] == vm_host), {"durations": {}})
                    entry = {
                        "round": r, "exit_code": code, "complete": doc.get("complete"),
                        "total_seconds": round(seconds, 2), "step_medians": step_medians(doc),
                        "before": client.window(before_start, t0), "during": client.window(t0, t1),
                        "moves": sum(len(h["moves"]) for h in doc.get("hosts", [])),
                        "vm": {"host": vm_host, "boot_id_before": boot_before.get("boot_id"),
                               "boot_ids_during": poller.boot_ids, "hosts_seen": poller.hosts,
                               "page_ok": poller.ok, "page_failed": len(poller.failures),
                               "kept_boot_id": poller.boot_ids == [boot_before.get("boot_id")],
                               "live_moves": [m for h in doc.get("hosts", []) for m in h["moves"]
                                              if m["guest"] == "web-0"],
                               "host_evacuate_s": home["durations"].get("evacuate"),
                               "host_failback_s": home["durations"].get("failback")},
                    }
                    failover = [e for e in probe.events(t0) if e["kind"] in ("host-dead", "fence")
                                and e["at"] <= t1]
                    entry["failovers"] = len(failover)
                    results["variants"].setdefault(variant, []).append(entry)
                    print(variant, json.dumps(entry), flush=True)
            client.stop()
        finally:
            lab.stop()
    summary = {}
    for variant, runs in results["variants"].items():
        summary[variant] = {
            "total_seconds_median": statistics.median(r["total_seconds"] for r in runs),
            "failed_requests": sum(r["during"]["failed"] for r in runs),
            "requests": sum(r["during"]["requests"] for r in runs),
            "p99_before_ms_median": statistics.median(r["before"]["p99_ms"] or 0 for r in runs),
            "p99_during_ms_median": statistics.median(r["during"]["p99_ms"] or 0 for r in runs),
            "step_medians": {k: statistics.median(r["step_medians"][k] for r in runs) for k in STEP_GROUPS},
            "complete": all(r["complete"] for r in runs), "failovers": sum(r["failovers"] for r in runs),
            "vm_kept_boot_id": all(r["vm"]["kept_boot_id"] for r in runs),
            "vm_page_failed": sum(r["vm"]["page_failed"] for r in runs),
            "vm_page_requests": sum(r["vm"]["page_ok"] + r["vm"]["page_failed"] for r in runs),
            "vm_host_evacuate_s_median": statistics.median(r["vm"]["host_evacuate_s"] or 0 for r in runs),
            "vm_host_failback_s_median": statistics.median(r["vm"]["host_failback_s"] or 0 for r in runs),
        }
    results["summary"] = summary
    results["load_average_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "patching.json").write_text(json.dumps(results, indent=2))
    lines = ["# bench/patching: 3-host rolling patch under load", "",
             f"{results['machine']}; load average {results['load_average_at_start']:.1f} at the start, "
             f"{results['load_average_at_end']:.1f} at the end; {rounds} round(s) per variant, medians; one lab cluster: 3 process guests "
             "behind the balancer (cold moves) and 1 VM (TCG, live migration), failback auto. `no-drain`: the "
             "same rollout without telling the balancer. Step columns: median over hosts of seconds per host; "
             "`VM host evac/failback`: the VM's host's evacuate and failback steps (its live migration out and "
             "back plus a cold move each way).", "",
             "| variant | total s | failed / requests | p99 before ms | p99 during ms | drain s | migrate s | "
             "patch s | verify s | failback s | VM host evac / failback s | VM boot id kept | VM page failed | "
             "failovers | complete |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, s in summary.items():
        m = s["step_medians"]
        lines.append(f"| {variant} | {s['total_seconds_median']:.1f} | {s['failed_requests']} / {s['requests']} | "
                     f"{s['p99_before_ms_median']:.1f} | {s['p99_during_ms_median']:.1f} | {m['drain']:.2f} | "
                     f"{m['migrate']:.2f} | {m['patch']:.2f} | {m['verify']:.2f} | {m['failback']:.2f} | "
                     f"{s['vm_host_evacuate_s_median']:.2f} / {s['vm_host_failback_s_median']:.2f} | "
                     f"{s['vm_kept_boot_id']} | {s['vm_page_failed']} / {s['vm_page_requests']} | "
                     f"{s['failovers']} | {s['complete']} |")
    (RESULTS / "patching.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
