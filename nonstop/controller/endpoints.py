"""The controller's heartbeat endpoints and which links each host should be heard on.

Role: ``Endpoint`` is one management network the controller listens on for heartbeats
(``--listen LINK=IP[/PREFIX]:PORT``); ``host_links`` maps every host of the spec to the links
whose network holds one of its management addresses (the addressing plan in
nonstop/core/net/management.py), so the monitor knows on how many links a host is expected.

Must not: open sockets (the heartbeat monitor does) or decide liveness.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from nonstop.core.net.management import host_addresses
from nonstop.core.spec import ClusterSpec


@dataclass(frozen=True)
class Endpoint:
    """One heartbeat endpoint of the controller: a management network it listens on."""

    link: str
    address: str
    port: int
    prefix: int = 24

    def to_dict(self) -> dict[str, Any]:
        return {"link": self.link, "address": self.address, "port": self.port, "prefix": self.prefix}


def host_links(spec: ClusterSpec, endpoints: list[Endpoint]) -> dict[str, list[str]]:
    """host → names of the links it should be heard on: the endpoints whose network holds one
    of its management addresses."""
    out: dict[str, list[str]] = {}
    for host in spec.hosts:
        links = []
        for _device, cidr in host_addresses(spec, host):
            addr = ipaddress.ip_interface(cidr).ip
            for ep in endpoints:
                if addr in ipaddress.ip_network(f"{ep.address}/{ep.prefix}", strict=False) and ep.link not in links:
                    links.append(ep.link)
        out[host.name] = links or [ep.link for ep in endpoints]
    return out
