"""The lab's names and addressing plan (pure functions of the cluster spec).

Role: say what every lab object is called and which address it has, so ``lab up``,
``lab down``, fault injection, tests and later issues (controller, BMCs, load balancer)
agree without asking the kernel. The plan (documented in docs/lab.md):

* namespaces ``nonstop-<cluster>-fab`` (the switches), ``-ctl`` (controller/management),
  ``-out`` (the upstream network) and ``-<host>`` per host;
* in ``fab``: one bridge per switch, named as the switch; switch k and k+1 joined by an
  inter-switch link ``isl<k>a``/``isl<k>b``, so the switches form one L2 domain (a team
  that fails over from sw0 to sw1 stays reachable); host NIC ports ``<host>-<nic>``
  (shortened with a hash when longer than 15); ctl and out legs ``c-<sw>``/``o-<sw>``,
  named ``<sw>`` inside ctl and out;
* management subnet per switch: switch k is 198.18.k.0/24 (k < 8), ctl .1, out .254,
  host number i (spec order) .(10 + i), .2 to .9 reserved for lab services; a host's
  uplink (team or NIC) gets the address of every switch its NICs are cabled to (the plan
  itself lives in nonstop/core/net/management.py, shared with the controller; its names
  are re-exported here);
* guest networks come from the spec and must lie in 198.18.0.0/15 outside
  198.18.0.0/21; out holds each bridged network's gateway and routes between them.

Must not: touch the system.
"""

from __future__ import annotations

import ipaddress

from nonstop.core.net.management import (
    CTL_OCTET,
    HOST_OCTET_BASE,
    MANAGEMENT_RANGE,
    MAX_SWITCHES,
    OUT_OCTET,
    host_addresses,
    host_default_gateway,
    host_octet,
    switch_address,
    switch_subnet,
    uplink_switches,
)
from nonstop.core.net.names import fit
from nonstop.core.net.render import gateway_address
from nonstop.core.spec import ClusterSpec, NetworkMode

LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
MAX_HOSTS = 200
STATE_ROOT = "/run/nonstop"


def ns_prefix(cluster: str) -> str:
    return f"nonstop-{cluster}-"


def fabric_ns(cluster: str) -> str:
    return f"nonstop-{cluster}-fab"


def ctl_ns(cluster: str) -> str:
    return f"nonstop-{cluster}-ctl"


def out_ns(cluster: str) -> str:
    return f"nonstop-{cluster}-out"


def host_ns(cluster: str, host: str) -> str:
    return f"nonstop-{cluster}-{host}"


def all_namespaces(spec: ClusterSpec) -> list[str]:
    c = spec.cluster
    return [fabric_ns(c), ctl_ns(c), out_ns(c)] + [host_ns(c, h.name) for h in spec.hosts]


def state_dir(cluster: str) -> str:
    return f"{STATE_ROOT}/{cluster}"


def port_name(host: str, nic: str) -> str:
    """The switch port (in fab) that host ``host``'s NIC ``nic`` is cabled to."""
    return fit("", f"{host}-{nic}")


def leg_names(role: str, switch: str) -> tuple[str, str]:
    """(switch-side port in fab, interface inside the ctl/out namespace) of a leg."""
    return fit(f"{role[0]}-", switch), switch


def isl_names(k: int) -> tuple[str, str]:
    """Inter-switch link between switches k and k+1: (end on k, end on k+1)."""
    return f"isl{k}a", f"isl{k}b"


LAG_MODES = ("balance-xor", "round-robin")
"""Team modes whose switch ports must be aggregated (a static LAG), as with Linux bonding."""


def lag_name(host: str, team: str, switch: str) -> str:
    return fit("lag-", f"{host}-{team}-{switch}")


def switch_lags(spec: ClusterSpec) -> list[tuple[str, str, list[str]]]:
    """(switch, LAG port name, member ports) for every team that needs a LAG: the team's
    NICs cabled to one switch (two or more of them) become one static LAG on that switch.
    Members spread over several switches cannot be aggregated (no MLAG in the lab)."""
    out = []
    for host in spec.hosts:
        for team in host.teams:
            if team.mode.value not in LAG_MODES:
                continue
            by_switch: dict[str, list[str]] = {}
            for i, nic in enumerate(host.nics):
                if nic.name in team.members:
                    by_switch.setdefault(spec.nic_switch(host, i), []).append(port_name(host.name, nic.name))
            for switch, ports in by_switch.items():
                if len(ports) >= 2:
                    out.append((switch, lag_name(host.name, team.name, switch), ports))
    return out


def bridged_gateways(spec: ClusterSpec) -> list[str]:
    """CIDRs out holds: the gateway of every bridged network."""
    return [
        f"{gateway_address(net)}/{net.network().prefixlen}" for net in spec.networks if net.mode is NetworkMode.BRIDGED
    ]


def check_plan(spec: ClusterSpec) -> list[str]:
    """Reasons the spec cannot be built as a lab (empty when it can)."""
    problems = []
    if len(spec.switches) > MAX_SWITCHES:
        problems.append(f"the lab supports at most {MAX_SWITCHES} switches, the spec has {len(spec.switches)}")
    if len(spec.hosts) > MAX_HOSTS:
        problems.append(f"the lab supports at most {MAX_HOSTS} hosts, the spec has {len(spec.hosts)}")
    for net in spec.networks:
        subnet = net.network()
        if not subnet.subnet_of(LAB_RANGE):
            problems.append(f"network {net.name}: {subnet} is outside the lab range {LAB_RANGE}")
        elif subnet.overlaps(MANAGEMENT_RANGE):
            problems.append(f"network {net.name}: {subnet} overlaps the lab management range {MANAGEMENT_RANGE}")
    for host in spec.hosts:
        if host.name in ("fab", "ctl", "out"):
            problems.append(f'host {host.name}: the names "fab", "ctl" and "out" are taken by lab namespaces')
        if len(ns_prefix(spec.cluster) + host.name) > 64:
            problems.append(f"host {host.name}: namespace name too long")
    return problems


__all__ = [
    "CTL_OCTET", "HOST_OCTET_BASE", "LAB_RANGE", "LAG_MODES", "MANAGEMENT_RANGE", "MAX_HOSTS", "MAX_SWITCHES",
    "OUT_OCTET", "STATE_ROOT", "all_namespaces", "bridged_gateways", "check_plan", "ctl_ns", "fabric_ns",
    "host_addresses", "host_default_gateway", "host_ns", "host_octet", "isl_names", "lag_name", "leg_names",
    "ns_prefix", "out_ns", "port_name", "state_dir", "switch_address", "switch_lags", "switch_subnet",
    "uplink_switches",
]
"""The lab's names, and the management plan's (nonstop.core.net.management) re-exported for its callers."""
