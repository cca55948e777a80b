"""The management network's addressing plan: which address each host, the controller and the
upstream side have on each switch (pure functions of the cluster spec).

Role: one place that says where management addresses come from, so the lab that builds the
network (nonstop/lab/names.py, nonstop/lab/fabric.py) and the controller that maps a host to
the heartbeat links it is heard on (nonstop/controller/) agree without either importing the
other. The plan (documented in docs/lab.md):

* switch k (spec order, k < ``MAX_SWITCHES``) is 198.18.k.0/24; together they make
  ``MANAGEMENT_RANGE`` (198.18.0.0/21);
* on every switch the controller (ctl) is .1, the upstream side (out) .254, host number i
  (spec order) .(10 + i); .2 to .9 are reserved for lab services;
* a host's uplink (a team or a NIC) gets the host's address on every switch its NICs are
  cabled to, on the device that carries host addresses for that uplink
  (``nonstop.core.net.render.uplink_device``); each switch is claimed once, by the first
  uplink that reaches it, and the first address is the host's primary one;
* a host's default gateway is out's address on the switch of its primary address.

Must not: touch the system, or depend on anything but its arguments: the same spec gives
the same addresses on every machine and every run.
"""

from __future__ import annotations

import ipaddress

from nonstop.core.net.render import uplink_device
from nonstop.core.spec import ClusterSpec, HostSpec

MANAGEMENT_RANGE = ipaddress.IPv4Network("198.18.0.0/21")
MAX_SWITCHES = 8
CTL_OCTET = 1
OUT_OCTET = 254
HOST_OCTET_BASE = 10


def switch_subnet(k: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"198.18.{k}.0/24")


def switch_address(k: int, octet: int) -> str:
    return f"198.18.{k}.{octet}"


def host_octet(spec: ClusterSpec, host: str) -> int:
    return HOST_OCTET_BASE + [h.name for h in spec.hosts].index(host)


def uplink_switches(spec: ClusterSpec, host: HostSpec, uplink: str) -> list[int]:
    """Indexes of the switches an uplink (team or NIC) reaches."""
    members = next((t.members for t in host.teams if t.name == uplink), [uplink])
    out: list[int] = []
    for i, nic in enumerate(host.nics):
        if nic.name in members:
            k = spec.switches.index(spec.nic_switch(host, i))
            if k not in out:
                out.append(k)
    return out


def host_addresses(spec: ClusterSpec, host: HostSpec) -> list[tuple[str, str]]:
    """(device, CIDR) of the host's management addresses; the first is its primary."""
    octet = host_octet(spec, host.name)
    claimed: set[int] = set()
    out = []
    for uplink in host.uplink_names():
        device = uplink_device(spec, host, uplink)
        for k in uplink_switches(spec, host, uplink):
            if k not in claimed:
                claimed.add(k)
                out.append((device, f"{switch_address(k, octet)}/24"))
    return out


def host_default_gateway(spec: ClusterSpec, host: HostSpec) -> str | None:
    """out's address on the switch of the host's primary address."""
    addresses = host_addresses(spec, host)
    if not addresses:
        return None
    k = int(addresses[0][1].split(".")[2])
    return switch_address(k, OUT_OCTET)
