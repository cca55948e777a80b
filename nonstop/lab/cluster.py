"""A whole running cluster in the lab: fabric, BMCs, store, agents, controller, balancers.

Role: ``LabCluster(spec, store_url)`` brings up, in order, everything a nonstop cluster is made
of on one Linux machine, and takes it down again:

1. the lab fabric (nonstop.lab.fabric.up: namespaces, switches, host networks, teams);
2. the cluster key (0600) and a BMC password file, in the run directory;
3. one Redfish BMC per host (one process in the ctl namespace, nonstop/lab/cluster_procs.py);
4. the store: the spec is written to it (``nonstop.store.state.put_spec``);
5. one ``nonstop lb`` per service in the out namespace (admin API on out's sw0 address so the
   controller reaches it; listener on 127.0.0.1 there) with a forwarder from 127.0.0.1 in the
   root namespace (the spec's listen port, or a free one);
6. the controller in the ctl namespace (heartbeat endpoint on every switch leg), and the
   hardware watcher beside it (``python -m nonstop.components``: every BMC over Redfish);
7. one agent per host inside its namespace and its own cgroup (heartbeats on every link).

Every process is recorded in the lab state, so ``nonstop lab down`` removes it too.
Faults: ``fail_host`` (Redfish ForceOff through the host's BMC, or kill -9 of everything in its
namespace), ``power_on``, ``cut_link`` / ``restore_link``, ``partition`` (an nftables table in
the host's namespace dropping heartbeats and acknowledgements, host left running) / ``heal``,
``fail_component`` / ``repair_component`` (a PSU, NIC, drive or fan through the host's lab BMC,
with the lab's consequences: a NIC's cable, a drive's mirror legs).

With a SQLite store (a file on this machine) a partition cannot cut store traffic and the
partitioned agent self-fences on controller silence; with an etcd store reached on 127.0.0.1
(relayed into the namespaces, as ``nonstop up --store etcd://`` does) ``partition`` drops the
store traffic too and the agent self-fences on its lost lease (docs/controller.md).

Must not: decide anything about guests (the controller does), or touch anything outside the
cluster's namespaces, cgroups (``nonstop.<cluster>.host-*``) and run directory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nonstop.core.spec import ClusterSpec, ServiceSpec
from nonstop.lab import cluster_procs as procs
from nonstop.lab import fabric, faults, names, state
from nonstop.net import netns

log = logging.getLogger("nonstop.lab.cluster")

HEARTBEAT_PORT = 5405
Progress = Callable[[str], None]


class LabCluster:
    def __init__(self, spec: ClusterSpec, store_url: str, *, drivers: str = "process", run_dir: str | None = None,
                 controller_args: list[str] | None = None) -> None:
        self.spec = spec
        self.cluster = spec.cluster
        self.store_url = store_url
        self.drivers = drivers
        self.run_dir = Path(run_dir or os.path.join(names.state_dir(spec.cluster), "cluster"))
        self.controller_args = list(controller_args or [])
        self.key_file = self.run_dir / "ha.key"
        self.password_file = self.run_dir / "bmc.pw"
        self.bmc_ports: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self.services: dict[str, dict[str, Any]] = {}
        """service → {"listen": "127.0.0.1:P" (root namespace), "admin": ip:port (from ctl), "pid"}."""
        self.started = False

    # ------------------------------------------------------------------ config

    def _cfg(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "store_url": self.store_url, "run_dir": str(self.run_dir),
            "key_file": str(self.key_file), "bmc_password_file": str(self.password_file),
            "spec_file": str(self.run_dir / "spec.json"), "bmc_ready_file": str(self.run_dir / "bmc-ports.json"),
            "drivers": self.drivers,
        }

    def _record(self, name: str, pid: int | None) -> None:
        """Remember (or, with ``None``, forget) a process of the lab, here and in the lab state."""
        if pid is None:
            self.pids.pop(name, None)
        else:
            self.pids[name] = pid
        with state.locked(self.cluster):
            lab = state.load(self.cluster)
            if lab is not None:
                if pid is None:
                    lab.processes.pop(name, None)
                else:
                    lab.processes[name] = pid
                state.save(lab)

    # ------------------------------------------------------------------ start/stop

    def start(self, progress: Progress | None = None) -> None:
        say = progress or (lambda text: log.info("%s", text))
        say(f"lab fabric for {self.cluster}: {len(self.spec.hosts)} hosts, switches {', '.join(self.spec.switches)}")
        fabric.up(self.spec)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from nonstop.ha.keys import generate_key

        if not self.key_file.exists():
            generate_key(self.key_file)
        if not self.password_file.exists():
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.urlsafe_b64encode(os.urandom(18)).decode())
        cfg = self._cfg()
        Path(cfg["spec_file"]).write_text(self.spec.model_dump_json())
        config_file = self.run_dir / "cluster.json"
        config_file.write_text(json.dumps(cfg))
        say("BMCs (Redfish) in the ctl namespace")
        pid, self.bmc_ports = procs.spawn_bmcs(cfg, config_file)
        self._record("bmcs", pid)
        say(f"store {self.store_url}: writing the spec")
        asyncio.run(self._put_spec())
        for i, service in enumerate(self.spec.services):
            say(f"balancer of service {service.name}")
            self.start_balancer(i, service)
        # The controller before the agents: an agent that hears no controller for the
        # self-fence timeout after its start fences itself.
        say("controller in the ctl namespace")
        self._start_controller()
        say("hardware watcher (Redfish) in the ctl namespace")
        self._start_hardware_watcher()
        for host in self.spec.hosts:
            say(f"agent of {host.name}")
            self._record(f"agent:{host.name}", procs.launch_agent(cfg, host.name))
        self.started = True
        say("cluster up")

    async def _put_spec(self) -> None:
        from nonstop.store import open_store
        from nonstop.store.state import put_spec

        store = open_store(self.store_url)
        try:
            await put_spec(store, self.spec)
        finally:
            await store.close()

    def start_balancer(self, index: int, service: ServiceSpec) -> None:
        """One ``nonstop lb`` for ``service`` in the out namespace and its 127.0.0.1 forwarder."""
        from nonstop.lab.forward import start_forward
        from nonstop.lab.services import LB_LISTEN_BASE, balancer_admin, write_balancer_config

        out = names.out_ns(self.cluster)
        inner = LB_LISTEN_BASE + index
        config = write_balancer_config(self.run_dir, index, service)
        proc = netns.spawn(out, [sys.executable, "-m", "nonstop.cli.main", "lb", "--config", str(config),
                                 "--log-level", "warning"], log_path=str(self.run_dir / f"lb-{service.name}.log"))
        self._record(f"lb:{service.name}", proc.pid)
        self._wait_tcp(out, "127.0.0.1", inner, proc.pid)
        port = int(service.listen.rpartition(":")[2] or 0)
        try:
            fwd = start_forward(self.cluster, "out", ("127.0.0.1", inner), listen_port=port)
        except RuntimeError:
            fwd = start_forward(self.cluster, "out", ("127.0.0.1", inner), listen_port=0)
        self.services[service.name] = {"listen": fwd["listen"], "port": fwd["port"], "admin": balancer_admin(index),
                                       "pid": proc.pid, "index": index, "inner": inner}

    def stop_balancer(self, name: str) -> dict[str, Any]:
        """Stop service ``name``'s balancer (a graceful stop) and its 127.0.0.1 forwarder; what
        was recorded of them."""
        from nonstop.lab.forward import stop_forward

        info = self.services.pop(name)
        netns.stop_pids([int(info["pid"])])
        stop_forward(self.cluster, int(info["port"]))
        self._record(f"lb:{name}", None)
        return info

    @property
    def admin_namespace(self) -> str:
        """The namespace the balancers' admin APIs and the BMCs are reached from (ctl)."""
        return names.ctl_ns(self.cluster)

    @staticmethod
    def _wait_tcp(ns: str, ip: str, port: int, pid: int, timeout: float = 15.0) -> None:
        from nonstop.lab.probe import socket_in

        def accepts() -> bool:
            sock = socket_in(ns)
            sock.settimeout(0.3)
            try:
                sock.connect((ip, port))
                return True
            except OSError:
                return False
            finally:
                sock.close()

        deadline = time.monotonic() + timeout
        while not accepts():
            if not netns.alive(pid) or time.monotonic() > deadline:
                raise RuntimeError(f"process {pid} is not listening on {ip}:{port} in {ns}")
            time.sleep(0.05)

    def controller_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "nonstop.controller", "--store", self.store_url, "--cluster", self.cluster,
                "--ha-key", str(self.key_file), "--netns", names.ctl_ns(self.cluster),
                "--bmc-password-file", str(self.password_file)]
        for k, switch in enumerate(self.spec.switches):
            argv += ["--listen", f"{switch}={names.switch_address(k, names.CTL_OCTET)}/24:{HEARTBEAT_PORT}"]
        for name, svc in self.services.items():
            argv += ["--balancer", f"{name}={svc['admin']}"]
        for host, port in self.bmc_ports.items():
            argv += ["--bmc", f"{host}=127.0.0.1:{port}"]
        return argv + self.controller_args

    def _start_controller(self) -> None:
        proc = netns.spawn(names.ctl_ns(self.cluster), self.controller_argv(),
                           log_path=str(self.run_dir / "controller.log"))
        self._record("controller", proc.pid)

    HARDWARE_WATCH_INTERVAL = 2.0
    """Redfish polling of every BMC, seconds: the fallback under the BMCs' events, which make
    detection immediate (a read of 3 BMCs costs ~10 % of a core per second here)."""

    def _start_hardware_watcher(self) -> None:
        """The one hardware watcher of the cluster (issue 9, docs/components.md)."""
        argv = [sys.executable, "-m", "nonstop.components", "--store", self.store_url, "--cluster", self.cluster,
                "--bmc-password-file", str(self.password_file), "--interval", str(self.HARDWARE_WATCH_INTERVAL)]
        argv += [f"--bmc={host}=127.0.0.1:{port}" for host, port in self.bmc_ports.items()]
        proc = netns.spawn(names.ctl_ns(self.cluster), argv, log_path=str(self.run_dir / "components.log"))
        self._record("components", proc.pid)

    def restart_controller(self, kill: bool = True, delay: float = 0.0) -> int:
        """Kill -9 (or stop) the controller and start a new one ``delay`` seconds later; its new pid."""
        pid = self.pids.get("controller")
        if pid and netns.alive(pid):
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            else:
                netns.stop_pids([pid])
        time.sleep(delay)
        self._start_controller()
        return self.pids["controller"]

    def stop(self) -> dict[str, list[str]]:
        """Stop every process and remove the lab (namespaces, cgroups, run directory)."""
        pids = [p for name, p in self.pids.items() if not name.startswith("agent:") and netns.alive(p)]
        netns.stop_pids(pids)
        removed = fabric.down(self.cluster, self.spec)
        for host in self.spec.hosts:
            for _ in range(3):
                leftover = procs.cgroup_pids(self.cluster, host.name)
                if not leftover:
                    break
                netns.stop_pids(sorted(leftover), timeout=1.0)
            procs.remove_host_cgroups(self.cluster, host.name)
        import shutil

        shutil.rmtree(self.run_dir, ignore_errors=True)
        if "qemu" in self.drivers:  # the QEMU driver's shared disks of this cluster (its default disk_dir)
            shutil.rmtree(Path("/var/lib/nonstop/disks") / self.cluster, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(names.state_dir(self.cluster))
        self.started = False
        return removed

    def __enter__(self) -> LabCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "store": self.store_url, "run_dir": str(self.run_dir),
            "processes": {name: {"pid": pid, "alive": netns.alive(pid)} for name, pid in self.pids.items()},
            "bmcs": {h: f"127.0.0.1:{p} (ctl namespace)" for h, p in self.bmc_ports.items()},
            "services": self.services,
            "partitioned": [h.name for h in self.spec.hosts if self._partition_table_exists(h.name)],
        }

    # ------------------------------------------------------------------ faults

    def _bmc_request(self, host: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One Redfish call to the host's BMC, from a thread inside ctl (where the BMC listens)."""
        port = self.bmc_ports[host]
        user = self.spec.host(host).bmc.username
        auth = base64.b64encode(f"{user}:{self.password_file.read_text().strip()}".encode()).decode()

        def call() -> Any:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 (lab-local URL)
                raw = resp.read()
                return json.loads(raw) if raw.strip() else None

        with netns.inside(names.ctl_ns(self.cluster)) as t:
            return t.call(call)

    def power(self, host: str, reset_type: str) -> None:
        self._bmc_request(host, "POST", f"/redfish/v1/Systems/{host}/Actions/ComputerSystem.Reset",
                          {"ResetType": reset_type})

    def power_state(self, host: str) -> str:
        return str(self._bmc_request(host, "GET", f"/redfish/v1/Systems/{host}")["PowerState"])

    def fail_host(self, host: str, how: str = "bmc") -> float:
        """Kill a host: ``bmc`` = Redfish ForceOff (everything of the host dies), ``kill`` = kill -9
        of every process in its namespace (agent, VMs; its process guests keep running until it is
        fenced). Returns the wall-clock time of the kill."""
        at = time.time()
        if how == "bmc":
            self.power(host, "ForceOff")
        elif how == "kill":
            from nonstop.bmc.power import kill_namespace

            kill_namespace(names.host_ns(self.cluster, host))
        else:
            raise ValueError(f"unknown way to fail a host: {how}")
        return at

    def power_on(self, host: str) -> None:
        """Power the host on through its BMC (its agent starts again)."""
        self.power(host, "On")

    def cut_link(self, host: str, nic: str) -> None:
        faults.cut(self.spec, host, nic)

    def restore_link(self, host: str, nic: str) -> None:
        faults.restore(self.spec, host, nic)

    def _partition_table(self) -> str:
        return "nonstop_partition"

    def _partition_table_exists(self, host: str) -> bool:
        ns = names.host_ns(self.cluster, host)
        if not netns.exists(ns):
            return False
        res = netns.run(ns, ["nft", "-j", "list", "table", "inet", self._partition_table()])
        return res.returncode == 0

    def partition_drops(self, host: str) -> dict[str, int]:
        """Packets the host's partition has dropped so far, per protocol (``udp``: heartbeats and
        acknowledgements, ``tcp``: store traffic); empty when the host is not partitioned."""
        ns = names.host_ns(self.cluster, host)
        res = netns.run(ns, ["nft", "-j", "list", "table", "inet", self._partition_table()])
        if res.returncode != 0:
            return {}
        drops: dict[str, int] = {}
        for item in json.loads(res.stdout).get("nftables", []):
            expr = item.get("rule", {}).get("expr", [])
            proto = next((e["match"]["left"]["payload"]["protocol"] for e in expr
                          if "match" in e and "payload" in e["match"].get("left", {})), None)
            packets = next((e["counter"]["packets"] for e in expr if isinstance(e.get("counter"), dict)), 0)
            if proto is not None:
                drops[proto] = drops.get(proto, 0) + int(packets)
        return drops

    def _store_port(self) -> int | None:
        """The TCP port of an etcd store the host reaches on its own 127.0.0.1 (relayed into the
        lab's namespaces, nonstop/up/storelink.py); None for SQLite (no traffic to drop)."""
        from urllib.parse import urlparse

        parsed = urlparse(self.store_url)
        return (parsed.port or 2379) if parsed.scheme == "etcd" else None

    def partition(self, host: str) -> None:
        """Drop the host's heartbeats and the controller's acknowledgements — and, with an etcd
        store, its store traffic both ways (nftables in the host's namespace); the host keeps
        running."""
        table = self._partition_table()
        drops = [("udp", HEARTBEAT_PORT)]
        if (store_port := self._store_port()) is not None:
            drops.append(("tcp", store_port))
        rules = []
        for chain, hook, match in (("out", "output", "dport"), ("in", "input", "sport")):
            rules.append({"add": {"chain": {"family": "inet", "table": table, "name": chain, "type": "filter",
                                            "hook": hook, "prio": -10, "policy": "accept"}}})
            for proto, port in drops:
                # TCP to the store relay runs over the host's loopback: drop both directions
                for field in ("dport", "sport") if proto == "tcp" else (match,):
                    rules.append({"add": {"rule": {"family": "inet", "table": table, "chain": chain, "expr": [
                        {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": port}},
                        {"counter": None}, {"drop": None}]}}})
        doc = {"nftables": [{"add": {"table": {"family": "inet", "name": table}}}, *rules]}
        res = netns.run(names.host_ns(self.cluster, host), ["nft", "-j", "-f", "-"], input=json.dumps(doc).encode())
        if res.returncode != 0:
            raise RuntimeError(f"partition of {host}: {res.stderr.decode().strip()}")

    def heal(self, host: str) -> None:
        """Undo ``partition`` (and restore every cable of the host)."""
        ns = names.host_ns(self.cluster, host)
        doc = {"nftables": [{"delete": {"table": {"family": "inet", "name": self._partition_table()}}}]}
        if self._partition_table_exists(host):
            netns.run(ns, ["nft", "-j", "-f", "-"], input=json.dumps(doc).encode())
        faults.rejoin(self.spec, host)

    def fail_component(self, kind: str, host: str, name: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Fail one PSU, NIC, drive or fan of ``host`` through the private admin path of its lab
        BMC (``nonstop.bmc.client.set_component``), so the BMC's own consequences follow (the
        last PSU powers the host off, a NIC's Port goes ``LinkDown``), plus the lab's: a NIC's
        cable is cut (idempotent with a BMC whose ``on_nic`` hook already does it), and with VMs
        a drive's mirror-leg servers die (``lab_set_drive``). The BMC's state summary afterwards
        (``{"host", "power", "health", "failed": [...]}``). The chaos CLI, the tests and the API
        come here through nonstop/components/chaos.py or call it directly."""
        return self._set_component(kind, host, name, True, timeout)

    def repair_component(self, kind: str, host: str, name: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Undo ``fail_component``: a NIC's cable restored, a drive replaced by a blank one."""
        return self._set_component(kind, host, name, False, timeout)

    def _set_component(self, kind: str, host: str, name: str, failed: bool, timeout: float) -> dict[str, Any]:
        from nonstop.bmc.client import set_component
        from nonstop.bmc.model import ComponentKind

        kinds = [k.value for k in ComponentKind]
        if kind not in kinds:
            raise ValueError(f"unknown component kind {kind!r} (one of {', '.join(kinds)})")
        if host not in self.bmc_ports:
            raise KeyError(f"no BMC for host {host!r} in lab {self.cluster}")
        url = f"http://127.0.0.1:{self.bmc_ports[host]}"
        user = self.spec.host(host).bmc.username
        secret = self.password_file.read_text().strip()
        with netns.inside(names.ctl_ns(self.cluster)) as thread:
            result: dict[str, Any] = thread.call(set_component, url, kind, name, failed, username=user,
                                                 password=secret, timeout=timeout)
        if kind == "nic" and result.get("power") != "Off":
            (faults.cut if failed else faults.restore)(self.spec, host, name)
        if kind == "drive" and "qemu" in str(self.drivers):
            # The lab's drives are directories; the drive dies for real: its mirror legs' servers.
            from nonstop.drivers.qemu_mirror_legs import lab_set_drive

            lab_set_drive(self.cluster, host, name, failed)
        return result
