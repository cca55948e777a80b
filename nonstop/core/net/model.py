"""Desired and observed host network state, and the operations that move one to the other.

Role: the vocabulary shared by the renderer (spec -> desired state), the converger
(desired + observed -> operations) and the shell that reads the kernel and applies the
operations through pyroute2 and ``nft -j``. Everything is a frozen dataclass so a plan can
be compared, printed and snapshot-tested as data.

Must not: talk to the kernel or know how an operation is carried out; the shell decides
that. nftables rules are held as canonical JSON text so they stay hashable and comparable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

LinkKind = Literal["bridge", "veth", "tap", "external"]
"""``external``: a link someone else made (a NIC, a team); we only set its master and state."""


@dataclass(frozen=True)
class LinkSpec:
    """One desired link in one namespace."""

    name: str
    kind: LinkKind
    peer: str | None = None
    """veth: the other end's name (created together with this end)."""
    peer_mac: str | None = None
    master: str | None = None
    mac: str | None = None
    up: bool = True
    addresses: tuple[str, ...] = ()
    """IPv4 addresses in CIDR form, e.g. ``198.19.20.1/24``."""
    manage_addresses: bool = True
    """False: leave the link's addresses alone (an uplink bridge carries the host's own)."""
    egress_rate: int | None = None
    """Bytes per second: a tbf qdisc shapes what leaves this device (toward a guest)."""


@dataclass(frozen=True)
class NftChain:
    name: str
    type: str
    hook: str
    priority: int
    policy: str = "accept"
    device: str | None = None
    rules: tuple[str, ...] = ()
    """Each rule's expression list as canonical JSON text (see ``rule``)."""


@dataclass(frozen=True)
class NftTable:
    family: str
    name: str
    chains: tuple[NftChain, ...]


def rule(*exprs: object) -> str:
    """Canonical JSON text for one rule's expression list."""
    return json.dumps(list(exprs), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class DesiredState:
    """What one namespace should contain (the part a caller manages)."""

    links: tuple[LinkSpec, ...] = ()
    tables: tuple[NftTable, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    """(path below /proc/sys, value), e.g. ("net/ipv4/ip_forward", "1")."""
    owned_link_prefixes: tuple[str, ...] = ()
    """Links with these prefixes that are not desired are deleted (convergence prunes)."""
    owned_table_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObservedLink:
    name: str
    kind: str
    master: str | None
    mac: str
    up: bool
    addresses: tuple[str, ...] = ()
    egress_rate: int | None = None
    peer_present: bool = True


@dataclass(frozen=True)
class ObservedState:
    links: tuple[ObservedLink, ...] = ()
    tables: tuple[tuple[str, str, frozenset[tuple[object, ...]]], ...] = ()
    """(family, name, fingerprint) for every table present (see nftables.fingerprint)."""
    sysctls: tuple[tuple[str, str], ...] = ()

    def link(self, name: str) -> ObservedLink | None:
        return next((link for link in self.links if link.name == name), None)


# ------------------------------------------------------------------------ operations


@dataclass(frozen=True)
class CreateLink:
    name: str
    kind: Literal["bridge", "veth", "tap"]
    peer: str | None = None
    mac: str | None = None
    peer_mac: str | None = None
    op: str = field(default="create_link", init=False)


@dataclass(frozen=True)
class DeleteLink:
    name: str
    op: str = field(default="delete_link", init=False)


@dataclass(frozen=True)
class SetMac:
    name: str
    mac: str
    op: str = field(default="set_mac", init=False)


@dataclass(frozen=True)
class SetMaster:
    name: str
    master: str | None
    op: str = field(default="set_master", init=False)


@dataclass(frozen=True)
class SetUp:
    name: str
    up: bool
    op: str = field(default="set_up", init=False)


@dataclass(frozen=True)
class AddAddress:
    name: str
    address: str
    op: str = field(default="add_address", init=False)


@dataclass(frozen=True)
class DeleteAddress:
    name: str
    address: str
    op: str = field(default="delete_address", init=False)


@dataclass(frozen=True)
class SetEgressRate:
    """Shape the device's egress with tbf; ``rate`` None removes the shaper."""

    name: str
    rate: int | None
    op: str = field(default="set_egress_rate", init=False)


@dataclass(frozen=True)
class ReplaceTable:
    """Load the whole table atomically (delete and re-add in one nft transaction)."""

    table: NftTable
    op: str = field(default="replace_table", init=False)


@dataclass(frozen=True)
class DeleteTable:
    family: str
    name: str
    op: str = field(default="delete_table", init=False)


@dataclass(frozen=True)
class SetSysctl:
    path: str
    value: str
    op: str = field(default="set_sysctl", init=False)


Op = (
    CreateLink | DeleteLink | SetMac | SetMaster | SetUp | AddAddress | DeleteAddress
    | SetEgressRate | ReplaceTable | DeleteTable | SetSysctl
)


def op_to_dict(op: Op) -> dict[str, object]:
    """Plain-data form of an operation (for snapshots, logs and ``--dry-run`` output)."""
    data = asdict(op)
    if isinstance(op, ReplaceTable):
        data = {"op": op.op, "family": op.table.family, "name": op.table.name}
    return data
