"""A mirrored VM disk in a whole lab cluster (root, QEMU/TCG), end to end with nothing done by
hand: the controller places a VM whose group declares ``disks: [{redundancy: mirror}]``; the
agent's QEMU driver boots it with a quorum over one leg per host drive; the guest writes 64 KiB
random blocks with fsync and re-reads earlier ones after dropping its page cache (the image's
``/cgi-bin/disk.cgi``), comparing each with the checksum it computed when it wrote it.

Disk0 fails through the BMC (``fail_component``: the lab kills that drive's leg server) under
that load: no error; the agent's mirror reconciler drops the dead leg by itself. Disk0 is
repaired (a blank drive): after the stability window the reconciler re-mirrors onto it by
itself. Then Disk1 fails too: every block ever written reads back from the re-mirrored leg."""

from __future__ import annotations

import random
import shutil
import threading
import time
from typing import Any

import pytest
from cluster.conftest import running_cluster
from cluster.lab_spec import lab_spec

from nonstop.components.chaos import fail_component
from nonstop.components.runner import with_policy
from nonstop.drivers.qemu_testlab import fetch_in
from nonstop.lab import names
from nonstop.store import keys

pytestmark = [
    pytest.mark.root, pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-nbd") is None,
                       reason="QEMU / qemu-nbd not installed"),
]

VM = {"name": "db", "kind": "vm", "replicas": 1, "vcpus": 1, "memory": "256MiB", "nics": [{"network": "prod"}],
      "port": 80, "spread": "soft", "priority": 200,
      "disks": [{"name": "data", "size": "64MiB", "redundancy": "mirror"}]}
WINDOW = 2.0


class Workload:
    """Writes fresh blocks and re-reads random earlier ones through the guest; every answer
    that is not "ok", or a checksum that differs from the one the guest wrote, is a failure."""

    def __init__(self, ns: str, ip: str, dev: str = "vda", blocks: int = 64) -> None:
        self.ns, self.ip, self.dev, self.blocks = ns, ip, dev, blocks
        self.written: dict[int, str] = {}
        self.ops = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.rng = random.Random(7)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def call(self, op: str, block: int) -> str | None:
        try:
            status, body = fetch_in(self.ns, self.ip, f"/cgi-bin/disk.cgi?dev={self.dev}&op={op}&block={block}",
                                    timeout=20)
        except OSError as exc:
            self.failures.append(f"{op} {block}: {exc!r}")
            return None
        word, _, value = body.strip().partition(" ")
        if status != 200 or word != "ok":
            self.failures.append(f"{op} {block}: {status} {body.strip()[:80]}")
            return None
        self.ops += 1
        return value

    def verify(self, block: int) -> None:
        got = self.call("read", block)
        if got is not None and got != self.written[block]:
            self.failures.append(f"block {block}: read {got[:12]}, wrote {self.written[block][:12]}")

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            block = i % self.blocks
            digest = self.call("write", block)
            if digest is not None:
                self.written[block] = digest
            if self.written:
                self.verify(self.rng.choice(sorted(self.written)))
            i += 1

    def wait_ops(self, more: int, timeout: float = 60) -> None:
        target, deadline = self.ops + more, time.monotonic() + timeout
        while self.ops < target:
            assert time.monotonic() < deadline and self.thread.is_alive(), f"workload stalled at {self.ops} ops"
            time.sleep(0.05)


def test_mirrored_vm_disk_survives_drive_failures_and_remirrors_by_itself() -> None:
    spec = with_policy(lab_spec(replicas=1, extra_groups=[VM]), "alert", WINDOW)
    with running_cluster(spec, drivers="process,qemu") as (lab, probe):
        out = names.out_ns(lab.cluster)
        ip = probe.desired()["db-0"]["vnics"][0]["address"].split("/")[0]
        host = probe.running()["db-0"]
        disk = f"{host}/db-0/data"

        def disk_ready() -> bool:
            try:
                return fetch_in(out, ip, "/cgi-bin/disk.cgi?dev=vda&op=read&block=0", timeout=2)[1].startswith("ok")
            except OSError:
                return False

        try:
            probe.wait_for("the VM's mirrored disk answering", disk_ready, timeout=150, every=0.5)
        except AssertionError:
            for tail in (lab.run_dir / f"agent-{host}.log", lab.run_dir / "agents" / host / "qemu" / "db-0" / "console.log",
                         lab.run_dir / "agents" / host / "qemu" / "db-0" / "qemu.log"):
                print(f"--- {tail}:", tail.read_text(errors="replace")[-3000:] if tail.exists() else "missing")
            raise

        def storage() -> dict[str, Any]:
            record = probe._run(lambda s: s.get_json(keys.host_components(lab.cluster, host))) or {}  # noqa: SLF001
            return dict((record.get("groups") or {}).get("storage") or {})

        probe.wait_for("the watcher's first reading", lambda: storage().get("state") == "redundant", timeout=15)
        workload = Workload(out, ip)
        workload.thread.start()
        timings: dict[str, Any] = {}
        try:
            workload.wait_ops(20)
            start = time.time()
            fail_component(lab, "drive", host, "Disk0")
            workload.wait_ops(10)  # the quorum has a dead leg: still no error
            dropped = probe.wait_for("dead leg dropped", lambda: probe.first("mirror-leg-dropped", disk, start),
                                     timeout=15, every=0.1)
            timings["dropped_s"] = round(dropped["at"] - start, 3)
            probe.wait_for("storage degraded", lambda: storage().get("state") == "degraded", timeout=5)
            workload.wait_ops(10)
            repaired_at = time.time()
            fail_component(lab, "drive", host, "Disk0", failed=False)
            try:
                done = probe.wait_for("re-mirrored by itself",
                                      lambda: probe.first("mirror-remirrored", disk, repaired_at), timeout=60, every=0.1)
            except AssertionError:
                print("storage:", storage())
                for e in probe.events(start):
                    print("event:", {k: e.get(k) for k in ("at", "kind", "subject", "reason")})
                log = (lab.run_dir / f"agent-{host}.log").read_text(errors="replace").splitlines()
                print("\n".join([line for line in log if "mirror" in line][-40:]))
                raise
            timings.update(remirrored_after_repair_s=round(done["at"] - repaired_at, 3),
                           copy_s=done.get("copy"), paused_s=done.get("paused"),
                           redundant_again_after_failure_s=round(done["at"] - start, 3))
            assert done["at"] - repaired_at >= WINDOW  # not before the stability window
            workload.wait_ops(10)
        finally:
            workload.stop.set()
            workload.thread.join(30)
        assert workload.failures == [], workload.failures[:5]

        # Now the other drive dies: every block must come from the re-mirrored leg.
        second = time.time()
        fail_component(lab, "drive", host, "Disk1")
        probe.wait_for("second dead leg dropped", lambda: probe.first("mirror-leg-dropped", disk, second),
                       timeout=15, every=0.1)
        for block in sorted(workload.written):
            workload.verify(block)
        assert workload.failures == [], workload.failures[:5]
        errors = fetch_in(out, ip, "/cgi-bin/disk.cgi?dev=vda&op=errors")
        assert errors[1].strip() == "ok 0", errors
        assert probe.running().get("db-0") == host  # nothing moved: the host kept its guest
        timings.update(ops=workload.ops, blocks=len(workload.written), guest_io_errors=0)
        print("\nmirror (lab):", timings)
        for e in probe.events(start):  # the timeline, for the docs and for a slow run
            if e["kind"].startswith("mirror") or e["subject"].endswith("/storage") or "/Disk" in e["subject"]:
                print(f"  +{e['at'] - start:7.3f}s {e['kind']:20} {e['subject']}: {e['reason']}")
        assert done.get("paused") is not None and float(done["paused"]) < 2.0
