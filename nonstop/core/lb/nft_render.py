"""Render the kernel L4 data plane: one nftables table of DNAT maps per balancer.

Role: a pure renderer from (table name, virtual services, serving backends) to the text
of ONE ``nft -f`` transaction that replaces the table atomically: ``add table`` (so the
delete cannot fail), ``delete table``, then the full new table. Nothing else on the
machine is named, so the balancer only ever touches its own table.

Forwarding, per virtual service (``listen`` ip:port):
- round-robin (and every algorithm without a key): ``numgen inc mod N map {i: ip . port}``
- source-hash / consistent-hash: ``jhash ip saddr mod N map {...}``
- weights: a backend appears ``weight`` times in the map (weights reduced by their gcd).
Rules sit on both the ``output`` hook (clients on this machine, loopback VIPs such as
127.0.0.100 — no route_localnet needed) and ``prerouting`` (clients from elsewhere).
A service with no serving backend gets only a counter rule: its packets go on to the VIP
itself, which (for a local address nobody listens on) answers with a reset at once.

Must not: run nft, or name any table not starting with ``nonstop_``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

TABLE_PATTERN = re.compile(r"^nonstop_[a-z0-9_]{1,40}$")
HASHED_ALGORITHMS = frozenset({"source-hash", "consistent-hash"})


@dataclass(frozen=True, slots=True)
class NftBackend:
    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class NftService:
    name: str
    listen_host: str
    listen_port: int
    algorithm: str
    backends: tuple[NftBackend, ...]


def _check_ipv4(address: str) -> str:
    if ipaddress.ip_address(address).version != 4:
        raise ValueError(f"nft data plane is IPv4 only, got {address}")
    return address


def map_entries(backends: Sequence[NftBackend]) -> list[NftBackend]:
    """Weight-expanded entries in a stable, interleaved order (a0 b0 a1 ...)."""
    weighted = [b for b in backends if b.weight > 0]
    if not weighted:
        return []
    g = 0
    for b in weighted:
        g = math.gcd(g, b.weight)
    counts = [b.weight // g for b in weighted]
    out: list[NftBackend] = []
    for round_ in range(max(counts)):
        out.extend(b for b, c in zip(weighted, counts, strict=True) if c > round_)
    return out


def service_rule(service: NftService) -> str:
    host = _check_ipv4(service.listen_host)
    match = f"ip daddr {host} tcp dport {service.listen_port}"
    entries = map_entries(service.backends)
    if not entries:
        return f'{match} counter comment "{service.name}: no backend"'
    pairs = ", ".join(f"{i} : {_check_ipv4(b.host)} . {b.port}" for i, b in enumerate(entries))
    if service.algorithm in HASHED_ALGORITHMS:
        selector = f"jhash ip saddr mod {len(entries)}"
    else:
        selector = f"numgen inc mod {len(entries)}"
    return f'{match} counter dnat ip to {selector} map {{ {pairs} }} comment "{service.name}"'


def render_table(table: str, services: Sequence[NftService]) -> str:
    """The whole transaction text for ``nft -f -``."""
    if not TABLE_PATTERN.match(table):
        raise ValueError(f'table name "{table}" must match {TABLE_PATTERN.pattern}')
    rules = "".join(f"\t\t{service_rule(s)}\n" for s in services)
    return (
        f"add table ip {table}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        f"\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n{rules}\t}}\n"
        f"\tchain prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;\n{rules}\t}}\n"
        f"}}\n"
    )


def render_delete(table: str) -> str:
    if not TABLE_PATTERN.match(table):
        raise ValueError(f'table name "{table}" must match {TABLE_PATTERN.pattern}')
    return f"add table ip {table}\ndelete table ip {table}\n"
