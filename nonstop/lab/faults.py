"""Fault injection on the lab's cables: cut, restore, isolate a host, rejoin it.

Role: emulate pulling and plugging network cables. Cutting sets one end of the NIC's
veth cable down (by default the switch end, so the host end loses carrier exactly as a
pulled cable does; ``end="host"`` downs the host's NIC instead); restoring brings both
ends up. Isolating a host cuts every one of its cables. Used by ``nonstop lab cut``,
tests and later issues (failure detection, failover).

Must not: change anything but the admin state of the named cable's ends.
"""

from __future__ import annotations

from typing import Literal

from nonstop.core.spec import ClusterSpec
from nonstop.lab import names, wiring

End = Literal["switch", "host", "both"]


class UnknownCableError(LookupError):
    pass


def _nic_names(spec: ClusterSpec, host: str) -> list[str]:
    try:
        return [n.name for n in spec.host(host).nics]
    except StopIteration:
        raise UnknownCableError(f'no host "{host}" in cluster {spec.cluster}') from None


def _ends(spec: ClusterSpec, host: str, nic: str) -> tuple[tuple[str, str], tuple[str, str]]:
    if nic not in _nic_names(spec, host):
        raise UnknownCableError(f'host {host} has no NIC "{nic}" (NICs: {", ".join(_nic_names(spec, host))})')
    return (
        (names.fabric_ns(spec.cluster), names.port_name(host, nic)),
        (names.host_ns(spec.cluster, host), nic),
    )


def cut(spec: ClusterSpec, host: str, nic: str, end: End = "switch") -> None:
    switch_end, host_end = _ends(spec, host, nic)
    if end in ("switch", "both"):
        wiring.set_state(*switch_end, up=False)
    if end in ("host", "both"):
        wiring.set_state(*host_end, up=False)


def restore(spec: ClusterSpec, host: str, nic: str) -> None:
    for ns, device in _ends(spec, host, nic):
        wiring.set_state(ns, device, up=True)


def isolate(spec: ClusterSpec, host: str) -> list[str]:
    nics = _nic_names(spec, host)
    for nic in nics:
        cut(spec, host, nic)
    return nics


def rejoin(spec: ClusterSpec, host: str) -> list[str]:
    nics = _nic_names(spec, host)
    for nic in nics:
        restore(spec, host, nic)
    return nics
