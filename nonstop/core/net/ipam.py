"""IP address management for one network, as a pure function over the taken addresses.

Role: given a subnet, its gateway and the addresses already taken (address -> owner),
choose the address for an owner: the one it already holds (so asking twice is harmless
and a guest keeps its address across restarts and moves), else the lowest free address.
The network address, the broadcast address and the gateway are never handed out.

Must not: store anything or guarantee uniqueness across concurrent callers by itself; the
shell (nonstop/net/ipam_store.py) claims the chosen address with compare-and-set in the
store and asks again when someone else got there first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping


class AddressPoolExhaustedError(Exception):
    def __init__(self, subnet: str) -> None:
        super().__init__(f"no free address left in {subnet}")
        self.subnet = subnet


def reserved(subnet: str, gateway: str | None) -> frozenset[str]:
    net = ipaddress.IPv4Network(subnet)
    out = {str(net.network_address), str(net.broadcast_address)}
    out.add(gateway if gateway is not None else str(net.network_address + 1))
    return frozenset(out)


def candidates(subnet: str, gateway: str | None) -> Iterator[str]:
    """Assignable addresses in ascending order."""
    skip = reserved(subnet, gateway)
    for address in ipaddress.IPv4Network(subnet):
        text = str(address)
        if text not in skip:
            yield text


def held_by(taken: Mapping[str, str], owner: str) -> str | None:
    """The lowest address ``owner`` holds, if any."""
    mine = sorted((ipaddress.IPv4Address(a) for a, o in taken.items() if o == owner))
    return str(mine[0]) if mine else None


def choose(subnet: str, gateway: str | None, taken: Mapping[str, str], owner: str) -> str:
    """The address ``owner`` should hold: the one it holds, else the lowest free one."""
    current = held_by(taken, owner)
    if current is not None:
        return current
    for address in candidates(subnet, gateway):
        if address not in taken:
            return address
    raise AddressPoolExhaustedError(subnet)
