"""Processes of a lab cluster: how agents are launched, and the lab hosts' BMCs as one process.

Role: two things the ``LabCluster`` (cluster.py) and the BMCs share.

- ``launch_agent(cfg, host)``: start ``python -m nonstop.agent`` inside the host's namespace,
  moved at once into a cgroup of its own (``nonstop.<cluster>.host-<host>`` in every v1
  controller the driver uses), so the guests it starts nest under it: two lab hosts on one
  machine never share a guest cgroup, and a power-off can find everything the host runs.
- ``python -m nonstop.lab.cluster_procs --config CFG``: every host's Redfish BMC
  (``nonstop.bmc.server.start_bmc``) in one event loop, run inside the ctl namespace so the
  controller reaches them on 127.0.0.1. Power-off (``LabHostBmc``) kills the host's namespace
  (the BMC's own behaviour) and every process in the host's cgroup tree (its process guests
  live in namespaces of their own), then removes those guest namespaces and the agent's
  per-guest runtime state — the machine's RAM is gone — all *before* PowerState reads Off: a
  fence that reads Off restarts the guests elsewhere at once, and a guest's namespace has the
  same name on every lab host, so a late clean-up would tear down the new instance. Then,
  through the ``on_power_off`` hook, its cables lose link (the switches flush what they
  learned there). Power-on plugs them back and starts the agent again. Ports go to the ready
  file as ``{host: port}``.

Must not: decide anything about guests; it emulates hardware and boots agents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("nonstop.lab.cluster")

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")


def host_cgroup(cluster: str, host: str) -> str:
    return f"nonstop.{cluster}.host-{host}"


def _own(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path.lstrip("/")
    return ""


def host_cgroup_dirs(cluster: str, host: str) -> list[Path]:
    out = []
    for ctrl in CGROUP_CONTROLLERS:
        base = CGROUP_ROOT / ctrl
        if base.is_dir():
            out.append(base / _own(ctrl) / host_cgroup(cluster, host))
    return out


HOST_CPU_SHARES = 8192
"""cpu.shares of a lab host's cgroup (a normal task weighs 1024). A lab host stands for a whole
machine: with group scheduling it would otherwise get one task's share of the CPU against every
other process here, and at load 30 its agent's heartbeats stall for a second — a false "dead",
a fence, and its replicas moved onto the others. Within the group, the agent's heartbeat thread
runs at nice -10 (nonstop/ha/heartbeat.py) and guests at normal priority."""


def join_host_cgroup(cluster: str, host: str, pid: int) -> None:
    for d in host_cgroup_dirs(cluster, host):
        with contextlib.suppress(OSError):
            d.mkdir(exist_ok=True)
            if (d / "cpu.shares").exists():
                (d / "cpu.shares").write_text(str(HOST_CPU_SHARES))
            (d / "cgroup.procs").write_text(str(pid))


def cgroup_pids(cluster: str, host: str) -> set[int]:
    pids: set[int] = set()
    for d in host_cgroup_dirs(cluster, host):
        if not d.is_dir():
            continue
        for procs in d.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_host_cgroups(cluster: str, host: str) -> None:
    for d in host_cgroup_dirs(cluster, host):
        if d.is_dir():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()


def agent_state_dir(cfg: dict[str, Any], host: str) -> Path:
    return Path(cfg["run_dir"]) / "agents" / host


def launch_agent(cfg: dict[str, Any], host: str) -> int:
    """Start the host's agent (detached, in its namespace and cgroup); its pid."""
    from nonstop.core.spec import ClusterSpec
    from nonstop.lab import names
    from nonstop.net import netns

    ns = names.host_ns(cfg["cluster"], host)
    argv = [sys.executable, "-m", "nonstop.agent", "--host", host, "--store", cfg["store_url"],
            "--cluster", cfg["cluster"], "--netns", ns, "--state-dir", str(agent_state_dir(cfg, host)),
            "--drivers", cfg.get("drivers", "process"), "--interval", str(cfg.get("agent_interval", 0.5)),
            "--lease-ttl", str(cfg.get("lease_ttl", 3)), "--ha-key", cfg["key_file"]]
    # Live migration: the destination listens on its own management address (127.0.0.1 would be
    # the host namespace's private loopback, which no other host reaches).
    spec = ClusterSpec.model_validate_json(Path(cfg["spec_file"]).read_text())
    argv += ["--migration-address", names.host_addresses(spec, spec.host(host))[0][1].split("/")[0]]
    if spec.host(host).teams:  # the agent reports its team daemon's view (active member, links) into the store
        from nonstop.lab.fabric import team_status_path

        argv += ["--team-status", team_status_path(cfg["cluster"], host)]
    proc = netns.spawn(ns, argv, log_path=str(Path(cfg["run_dir"]) / f"agent-{host}.log"))
    join_host_cgroup(cfg["cluster"], host, proc.pid)
    return proc.pid


def kill_host_guests(cfg: dict[str, Any], host: str) -> list[int]:
    """Power-off, second half: every process of the host's cgroup tree, its guest namespaces
    and the agent's per-guest runtime state."""
    from nonstop.bmc import power
    from nonstop.drivers import process_net

    killed: list[int] = []
    for _ in range(50):
        pids = cgroup_pids(cfg["cluster"], host) - {os.getpid()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.01)
    process_dir = agent_state_dir(cfg, host) / "process"
    # A guest that runs on another host now (its runtime state is there) keeps its namespace:
    # the name is per guest, not per host.
    elsewhere = {d.name for d in agent_state_dir(cfg, host).parent.glob("*/process/*")
                 if d.is_dir() and d.parent.parent.name != host}
    if process_dir.is_dir():
        for guest_dir in process_dir.iterdir():
            if guest_dir.is_dir() and guest_dir.name in elsewhere:
                shutil.rmtree(guest_dir, ignore_errors=True)
            elif guest_dir.is_dir():
                ns = process_net.netns_name(cfg["cluster"], guest_dir.name)
                power.kill_namespace(ns, timeout=2.0)
                process_net.remove_netns(ns)
                shutil.rmtree(guest_dir, ignore_errors=True)
    return killed


def lab_host_bmc(cfg: dict[str, Any], host: str, config: Any, hooks: Any) -> Any:
    """A lab host's ``Bmc`` whose power-off also kills the host's process guests (and removes
    their namespaces) before PowerState turns Off, so "Off" means the guests are gone."""
    from nonstop.bmc import power
    from nonstop.bmc.server import Bmc

    class LabHostBmc(Bmc):
        async def _kill(self, graceful: bool) -> power.KillReport:
            report = await super()._kill(graceful)
            if report.complete:
                killed = await asyncio.to_thread(kill_host_guests, cfg, host)
                log.info("BMC %s: power off: %d process(es) in guests", host, len(killed))
            return report

    return LabHostBmc(config, hooks)


def restart_team_daemons(spec: Any) -> None:
    """A booting host starts its team daemon again: the power-off killed everything in the host's
    namespace, the daemon too, and without it a team never fails over (and its state goes stale)."""
    from nonstop.lab import fabric, state

    with state.locked(spec.cluster):
        lab = state.load(spec.cluster)
        if lab is not None:
            fabric._start_processes(spec, lab)  # starts only the lab processes that are not running
            state.save(lab)


async def serve_bmcs(cfg: dict[str, Any]) -> None:
    from nonstop.bmc import power
    from nonstop.bmc.model import HostHardware
    from nonstop.bmc.server import BmcConfig, BmcHooks, start_bmc
    from nonstop.core.spec import ClusterSpec
    from nonstop.lab import faults, names

    spec = ClusterSpec.model_validate_json(Path(cfg["spec_file"]).read_text())
    password = Path(cfg["bmc_password_file"]).read_text().strip()
    running = {}
    for host in spec.hosts:
        name = host.name

        async def on_power_off(report: power.KillReport, name: str = name) -> None:
            # A powered-off server's NICs lose link: the switches forget the MACs they learned
            # there, so a guest restarted elsewhere is reachable at once (no stale FDB entry).
            await asyncio.to_thread(faults.isolate, spec, name)
            log.info("BMC %s: power off: %d process(es) in the namespace; cables down", name, len(report.killed))

        async def on_power_on(name: str = name) -> None:
            await asyncio.to_thread(faults.rejoin, spec, name)
            await asyncio.to_thread(restart_team_daemons, spec)
            pid = await asyncio.to_thread(launch_agent, cfg, name)
            log.info("BMC %s: power on: agent started (pid %d)", name, pid)

        config = BmcConfig(HostHardware.from_spec(host), names.host_ns(spec.cluster, name), username=host.bmc.username,
                           password=password, port=0)
        hooks = BmcHooks(on_power_on=on_power_on, on_power_off=on_power_off)
        running[name] = await start_bmc(config, hooks, bmc=lab_host_bmc(cfg, name, config, hooks))
    ready = Path(cfg["bmc_ready_file"])
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: r.port for name, r in running.items()}))
    tmp.replace(ready)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_pid = os.getpid()

    def handler(_signum: int, _frame: object) -> None:
        # Not loop.add_signal_handler: pyroute2 forks netns helpers (faults.isolate) and SIGTERMs
        # them; asyncio's wakeup fd, shared with the fork, would deliver their signal to us.
        if os.getpid() == main_pid:
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    await stop.wait()
    for r in running.values():
        r.server.should_exit = True
    await asyncio.gather(*(r.task for r in running.values()), return_exceptions=True)


def spawn_bmcs(cfg: dict[str, Any], config_file: Path, timeout: float = 15.0) -> tuple[int, dict[str, int]]:
    """Start the BMC process inside ctl; (pid, {host: port})."""
    from nonstop.lab import names
    from nonstop.net import netns

    ready = Path(cfg["bmc_ready_file"])
    ready.unlink(missing_ok=True)
    proc = netns.spawn(names.ctl_ns(cfg["cluster"]), [sys.executable, "-m", "nonstop.lab.cluster_procs", "--config",
                       str(config_file)], log_path=str(Path(cfg["run_dir"]) / "bmc.log"))
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            netns.stop_pids([proc.pid])
            raise RuntimeError(f"the lab BMCs did not start (see {cfg['run_dir']}/bmc.log)")
        time.sleep(0.02)
    return proc.pid, {k: int(v) for k, v in json.loads(ready.read_text()).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nonstop.lab.cluster_procs")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve_bmcs(json.loads(Path(args.config).read_text())))


if __name__ == "__main__":
    main()
