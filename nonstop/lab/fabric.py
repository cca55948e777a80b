"""The lab fabric: a whole cluster's emulated hardware on one Linux machine.

Role: ``up`` builds, from a cluster spec, the namespaces (fab, ctl, out, one per host),
the switches (bridges in fab, chained by inter-switch links), every NIC cable, the ctl
and out legs on every switch, management addresses (see nonstop.lab.names), each host's
teams (nonstop.net.team) and virtual networks (nonstop.net.host), and the lab's
processes (out's upstream HTTP server, one team daemon per teamed host). ``down``
removes all of it: the processes the lab started and every process left inside its
namespaces (by pid), the namespaces (which takes their links and nftables tables with
them) and the state files. ``up`` is idempotent; after a crash (state file not ``up``, or
a lab process dead, or namespaces without a state file) it first removes the leftovers.

Nothing is created in the root namespace: no link, no address, no route, no table.

Must not: configure anything outside the lab's own namespaces, or kill a process that is
neither recorded in the state file nor inside one of the lab's namespaces.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
from typing import Any

from nonstop.core.net.names import vnic_mac
from nonstop.core.spec import ClusterSpec, HostSpec
from nonstop.lab import names, state, wiring
from nonstop.net import host as host_net
from nonstop.net import netns

log = logging.getLogger(__name__)

UPSTREAM_PORT = 80
TEAM_DAEMON_MODULE = "nonstop.net.team_daemon"


class LabPlanError(ValueError):
    """The spec cannot be built as a lab (see names.check_plan)."""


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


# ------------------------------------------------------------------------- building


def _build_switches(spec: ClusterSpec) -> None:
    fab = names.fabric_ns(spec.cluster)
    for switch in spec.switches:
        wiring.ensure_bridge(fab, switch)
    for k in range(len(spec.switches) - 1):
        a, b = names.isl_names(k)
        wiring.ensure_cable(fab, a, fab, b, master_a=spec.switches[k])
        wiring.set_master(fab, b, spec.switches[k + 1])


def _build_legs(spec: ClusterSpec) -> None:
    """ctl and out get one interface on every switch, with that switch's management address."""
    fab = names.fabric_ns(spec.cluster)
    for role, ns, octet in (("ctl", names.ctl_ns(spec.cluster), names.CTL_OCTET), ("out", names.out_ns(spec.cluster), names.OUT_OCTET)):
        wiring.set_sysctls(ns, {**wiring.ARP_SYSCTLS, "net/ipv4/ip_forward": "1" if role == "out" else "0"})
        wiring.ensure_up(ns, "lo")
        for k, switch in enumerate(spec.switches):
            port, inner = names.leg_names(role, switch)
            wiring.ensure_cable(fab, port, ns, inner, master_a=switch)
            wiring.ensure_address(ns, inner, f"{names.switch_address(k, octet)}/24")
    out = names.out_ns(spec.cluster)
    first_leg = names.leg_names("out", spec.switches[0])[1]
    for cidr in names.bridged_gateways(spec):
        wiring.ensure_address(out, first_leg, cidr)
    ctl = names.ctl_ns(spec.cluster)
    wiring.ensure_default_route(ctl, names.switch_address(0, names.OUT_OCTET))


def _build_host(spec: ClusterSpec, host: HostSpec) -> None:
    fab = names.fabric_ns(spec.cluster)
    ns = names.host_ns(spec.cluster, host.name)
    wiring.set_sysctls(ns, wiring.ARP_SYSCTLS)
    wiring.ensure_up(ns, "lo")
    in_lag = {port for _, _, ports in names.switch_lags(spec) for port in ports}
    for i, nic in enumerate(host.nics):
        port = names.port_name(host.name, nic.name)
        # a LAG member port is off the bridge: the LAG's own port sits there in its place
        wiring.ensure_cable(fab, port, ns, nic.name, master_a=None if port in in_lag else spec.nic_switch(host, i))
    if host.teams:
        if not _has_module("nonstop.net.team"):
            raise LabPlanError(f"host {host.name} has teams but nonstop.net.team is not installed")
        from nonstop.net.team import setup_team

        speeds = {n.name: n.speed for n in host.nics}
        for team in host.teams:
            setup_team(ns, team, mac=vnic_mac(spec.cluster, f"team:{host.name}:{team.name}", 0), speeds=speeds)
    host_net.ensure_host_network(ns, spec, host)
    for device, cidr in names.host_addresses(spec, host):
        wiring.ensure_up(ns, device)
        wiring.ensure_address(ns, device, cidr)
    gateway = names.host_default_gateway(spec, host)
    if gateway is not None:
        wiring.ensure_default_route(ns, gateway)


def _build_lags(spec: ClusterSpec) -> None:
    """Static LAGs on the switches for balance-xor / round-robin teams (nonstop.net.team)."""
    lags = names.switch_lags(spec)
    if not lags:
        return
    from nonstop.net.team import setup_switch_lag

    for switch, lag, ports in lags:
        setup_switch_lag(names.fabric_ns(spec.cluster), switch, ports, lag)


def _start_processes(spec: ClusterSpec, lab: state.LabState) -> None:
    directory = names.state_dir(spec.cluster)
    python = sys.executable
    if not netns.alive(lab.processes.get("upstream", 0) or -1):
        proc = netns.spawn(
            names.out_ns(spec.cluster),
            [python, "-m", "nonstop.lab.upstream", "--port", str(UPSTREAM_PORT), "--name", "out"],
            log_path=os.path.join(directory, "upstream.log"),
        )
        lab.processes["upstream"] = proc.pid
        _wait_listening(names.out_ns(spec.cluster), UPSTREAM_PORT, proc.pid)
    lags = names.switch_lags(spec)
    if lags and _has_module(TEAM_DAEMON_MODULE) and not netns.alive(lab.processes.get("team-daemon:fab", 0) or -1):
        fab = names.fabric_ns(spec.cluster)
        argv = [python, "-m", TEAM_DAEMON_MODULE, "--netns", fab, "--status-file", team_status_path(spec.cluster, "fab")]
        for _, lag, ports in lags:
            argv += ["--lag", f"{lag}={','.join(ports)}"]
        proc = netns.spawn(fab, argv, log_path=os.path.join(directory, "team-fab.log"))
        lab.processes["team-daemon:fab"] = proc.pid
        _wait_file(team_status_path(spec.cluster, "fab"), proc.pid)
    if _has_module(TEAM_DAEMON_MODULE):
        for host in spec.hosts:
            key = f"team-daemon:{host.name}"
            if host.teams and not netns.alive(lab.processes.get(key, 0) or -1):
                ns = names.host_ns(spec.cluster, host.name)
                proc = netns.spawn(
                    ns,
                    [python, "-m", TEAM_DAEMON_MODULE, "--netns", ns, "--spec", state.spec_path(spec.cluster), "--host", host.name,
                     "--status-file", team_status_path(spec.cluster, host.name)],
                    log_path=os.path.join(directory, f"team-{host.name}.log"),
                )
                lab.processes[key] = proc.pid
                _wait_file(team_status_path(spec.cluster, host.name), proc.pid)


def _wait_file(path: str, pid: int, timeout: float = 10.0) -> None:
    """Return once ``path`` exists (a daemon's first status file: it is running)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline or not netns.alive(pid):
            raise RuntimeError(f"lab process {pid} did not write {path}")
        time.sleep(0.02)


def _wait_listening(ns: str, port: int, pid: int, timeout: float = 10.0) -> None:
    """Return once something accepts on 127.0.0.1:``port`` inside ``ns``."""
    from nonstop.lab.probe import socket_in

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and netns.alive(pid):
        sock = socket_in(ns)
        try:
            sock.settimeout(0.2)
            sock.connect(("127.0.0.1", port))
            return
        except OSError:
            time.sleep(0.02)
        finally:
            sock.close()
    raise RuntimeError(f"lab process {pid} did not start listening on port {port} in {ns}")


def team_status_path(cluster: str, host: str) -> str:
    """Where the host's team daemon writes its status JSON."""
    return os.path.join(names.state_dir(cluster), f"team-{host}.json")


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _needs_cleanup(spec: ClusterSpec, lab: state.LabState | None) -> bool:
    if lab is None:
        return any(netns.exists(ns) for ns in names.all_namespaces(spec))
    if lab.phase != "up":
        return True
    return any(not netns.alive(pid) for pid in lab.processes.values())


def up(spec: ClusterSpec, start_processes: bool = True) -> state.LabState:
    """Build (or converge) the lab for ``spec``; returns the recorded state."""
    problems = names.check_plan(spec)
    if problems:
        raise LabPlanError("; ".join(problems))
    with state.locked(spec.cluster):  # two `lab up` at once would build over each other
        return _up(spec, start_processes)


def _up(spec: ClusterSpec, start_processes: bool) -> state.LabState:
    previous = state.load(spec.cluster)
    if _needs_cleanup(spec, previous):
        log.info("lab %s: removing leftovers of an earlier run", spec.cluster)
        down(spec.cluster, spec)
        previous = None
    lab = previous or state.LabState(cluster=spec.cluster)
    lab.phase = "building"
    dropped = sorted(set(lab.namespaces) - set(names.all_namespaces(spec)))  # hosts gone from the spec
    for ns in dropped:
        netns.stop_pids(netns.pids_in(ns))
        _delete_namespace(ns)
    lab.processes = {k: p for k, p in lab.processes.items() if not k.startswith("team-daemon:") or names.host_ns(spec.cluster, k.split(":", 1)[1]) not in dropped}
    lab.namespaces = sorted(names.all_namespaces(spec))
    state.save(lab)
    state.save_spec(spec.cluster, spec.model_dump_json(indent=2))
    for ns in names.all_namespaces(spec):
        netns.create(ns)
    _build_switches(spec)
    _build_legs(spec)
    for host in spec.hosts:
        _build_host(spec, host)
    _build_lags(spec)
    if start_processes:
        _start_processes(spec, lab)
    lab.phase = "up"
    state.save(lab)
    return lab


# ------------------------------------------------------------------------ teardown


def down(cluster: str, spec: ClusterSpec | None = None) -> dict[str, list[str]]:
    """Remove everything the lab of ``cluster`` made; returns what was removed. Works from
    the state file alone, from the spec alone, or from both (after a crash)."""
    lab = state.load(cluster)
    namespaces = set(lab.namespaces if lab else [])
    if spec is None:
        spec = _saved_spec(cluster)
    if spec is not None:
        namespaces |= set(names.all_namespaces(spec))
    namespaces |= set(_prefixed_namespaces(cluster))
    removed: dict[str, list[str]] = {"processes": [], "namespaces": []}
    pids = [pid for pid in (lab.processes.values() if lab else []) if netns.alive(pid)]
    pids += [int(f["pid"]) for f in (lab.forwards if lab else []) if netns.alive(int(f["pid"]))]  # type: ignore[call-overload]
    for ns in sorted(namespaces):
        pids += [pid for pid in netns.pids_in(ns) if pid != os.getpid()]
    pids = sorted(set(pids))
    netns.stop_pids(pids)
    removed["processes"] = [str(p) for p in pids]
    for ns in sorted(namespaces):
        if _delete_namespace(ns):
            removed["namespaces"].append(ns)
    state.remove_files(cluster)
    return removed


def _delete_namespace(ns: str) -> bool:
    """Delete the namespace, removing its veths first: the kernel destroys a dead namespace's
    links asynchronously, and the other ends (in fab) should not outlive this call."""
    if not netns.exists(ns):
        return False
    with contextlib.suppress(OSError), netns.iproute(ns) as ipr:
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "veth":
                with contextlib.suppress(Exception):
                    ipr.link("del", index=link["index"])
    return netns.delete(ns)


def _prefixed_namespaces(cluster: str) -> list[str]:
    """Namespaces named ``nonstop-<cluster>-*`` (guest namespaces of this cluster's lab too),
    except those of another lab whose cluster name extends ours (``lab`` vs ``lab-b``)."""
    prefix = names.ns_prefix(cluster)
    others = [names.ns_prefix(c) for c in state.clusters() if c != cluster and names.ns_prefix(c).startswith(prefix)]
    return [ns for ns in netns.list_names(prefix) if not any(ns.startswith(o) for o in others)]


def _saved_spec(cluster: str) -> ClusterSpec | None:
    try:
        with open(state.spec_path(cluster)) as f:
            return ClusterSpec.model_validate_json(f.read())
    except (FileNotFoundError, ValueError):
        return None


def load_running_spec(cluster: str) -> ClusterSpec:
    spec = _saved_spec(cluster)
    if spec is None:
        raise LookupError(f"no lab is up for cluster {cluster}")
    return spec


# -------------------------------------------------------------------------- status


def status(cluster: str) -> dict[str, Any]:
    spec = load_running_spec(cluster)
    lab = state.load(cluster)
    fab = names.fabric_ns(cluster)
    hosts = {}
    for host in spec.hosts:
        ns = names.host_ns(cluster, host.name)
        nics = {}
        for nic in host.nics:
            port = wiring.link_state(fab, names.port_name(host.name, nic.name)) if netns.exists(fab) else None
            inner = wiring.link_state(ns, nic.name) if netns.exists(ns) else None
            nics[nic.name] = {"switch_port": port, "host_end": inner}
        hosts[host.name] = {
            "namespace": ns, "exists": netns.exists(ns), "addresses": [c for _, c in names.host_addresses(spec, host)],
            "nics": nics, "teams": _read_json(team_status_path(cluster, host.name)) if host.teams else None,
        }
    return {
        "cluster": cluster,
        "phase": lab.phase if lab else None,
        "namespaces": {ns: netns.exists(ns) for ns in names.all_namespaces(spec)},
        "processes": {k: {"pid": p, "alive": netns.alive(p)} for k, p in (lab.processes.items() if lab else [])},
        "forwards": lab.forwards if lab else [],
        "hosts": hosts,
    }


def wait_for_carrier(ns: str, device: str, want: bool, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = wiring.link_state(ns, device)
        if info is not None and bool(info["carrier"]) == want:
            return True
        time.sleep(0.01)
    return False
