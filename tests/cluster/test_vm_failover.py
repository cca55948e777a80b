"""VM failover in the lab (root, QEMU under TCG): the host running a VM is powered off through
its BMC; the VM is restarted (cold: a new boot) on another host from its shared disk, and its
web page answers again from the out namespace. Process guests on the same cluster keep serving."""

from __future__ import annotations

import shutil
import time

import pytest

from nonstop.drivers.qemu_testlab import fetch_in, parse_page
from nonstop.lab import names

from .conftest import running_cluster
from .harness import InstanceChecker, Load
from .lab_spec import lab_spec

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
]

VM = {"name": "web", "kind": "vm", "replicas": 1, "vcpus": 1, "memory": "256MiB", "nics": [{"network": "prod"}],
      "port": 80, "spread": "soft", "priority": 200}


def page(ns: str, ip: str) -> dict[str, str] | None:
    try:
        status, body = fetch_in(ns, ip, "/", timeout=1.0)
    except OSError:
        return None
    return parse_page(body) if status == 200 else None


def test_vm_restarted_elsewhere_after_a_bmc_power_off() -> None:
    spec = lab_spec(replicas=2, extra_groups=[VM])
    with running_cluster(spec, drivers="process,qemu") as (lab, probe):
        out = names.out_ns(lab.cluster)
        ip = probe.desired()["web-0"]["vnics"][0]["address"].split("/")[0]
        first = probe.wait_for("the VM serving", lambda: page(out, ip), timeout=90, every=0.5)
        victim = probe.running()["web-0"]
        with InstanceChecker(lab, ["api-0", "api-1"]) as checker, Load(lab.services["api"]["port"]) as load:
            killed = lab.fail_host(victim, "bmc")
            dead = probe.wait_for("host-dead", lambda: probe.first("host-dead", victim, killed), timeout=10)
            probe.wait_for("VM running elsewhere", lambda: probe.running().get("web-0") not in (None, victim), timeout=60)
            running_at = time.time()
            again = probe.wait_for("the VM serving again", lambda: (p := page(out, ip)) and p.get("boot_id") != first.get("boot_id") and p,
                                   timeout=90, every=0.2)
            serving_at = time.time()
        assert dead["at"] - killed < 1.5
        assert again["boot_id"] != first["boot_id"]  # a cold restart: a new boot
        assert probe.first("fence", victim, killed) is not None
        assert load.failures == [], load.failures[:3]
        assert checker.max_instances <= 1
        print(f"VM: detection {dead['at'] - killed:.2f}s, running {running_at - killed:.2f}s, "
              f"serving {serving_at - killed:.2f}s after the kill")
