"""Convergence: desired state + observed state -> the operations that make them equal.

Role: the level-triggered heart of host networking. Given what should exist and what the
shell read from the kernel, list the operations (in a safe order) that close the gap:
prune owned leftovers, create missing links (bridges before their ports; a veth pair
whose twin vanished is recreated), then fix MACs, masters, addresses, shapers and admin
state, replace any nftables table whose fingerprint differs, and set sysctls. When
observed equals desired the answer is empty, which is what makes apply idempotent and
lets a half-applied host converge.

Must not: touch the kernel, or manage what it does not own: links of kind ``external``
(NICs, teams) are never created, deleted or re-addressed, only given a master and an
admin state; unowned links and tables are never pruned.
"""

from __future__ import annotations

from nonstop.core.net.model import (
    AddAddress,
    CreateLink,
    DeleteAddress,
    DeleteLink,
    DeleteTable,
    DesiredState,
    ObservedLink,
    ObservedState,
    Op,
    ReplaceTable,
    SetEgressRate,
    SetMac,
    SetMaster,
    SetSysctl,
    SetUp,
)
from nonstop.core.net.nftables import fingerprint

_CREATE_ORDER = {"bridge": 0, "veth": 1, "tap": 1, "external": 2}


class MissingExternalLinkError(Exception):
    """A link we must attach (a NIC or a team) does not exist yet."""

    def __init__(self, name: str) -> None:
        super().__init__(f'link "{name}" (an uplink NIC or team) does not exist in the namespace')
        self.name = name


def converge(desired: DesiredState, observed: ObservedState) -> tuple[Op, ...]:
    ops: list[Op] = []
    current: dict[str, ObservedLink | None] = {link.name: link for link in observed.links}
    wanted = {link.name for link in desired.links}

    # Leftovers first, so their names and addresses are free for what comes next.
    for link in observed.links:
        if link.name not in wanted and link.name.startswith(desired.owned_link_prefixes):
            ops.append(DeleteLink(link.name))
            current.pop(link.name, None)

    fresh: dict[str, str | None] = {}
    """Links the plan creates -> the MAC they are created with (None: a kernel MAC)."""
    for spec in sorted(desired.links, key=lambda s: _CREATE_ORDER[s.kind]):
        have = current.get(spec.name)
        if spec.kind == "external":
            if have is None:
                raise MissingExternalLinkError(spec.name)
            continue
        if spec.name in fresh:
            continue
        twin_lost = spec.kind == "veth" and spec.peer in wanted and current.get(spec.peer or "") is None
        if have is not None and (have.kind != spec.kind or twin_lost):
            ops.append(DeleteLink(spec.name))
            current[spec.name] = have = None
        if have is None:
            if spec.kind == "veth" and spec.peer is not None and current.get(spec.peer) is not None:
                ops.append(DeleteLink(spec.peer))  # a lone twin: the pair is made again whole
                current[spec.peer] = None
            ops.append(CreateLink(spec.name, spec.kind, peer=spec.peer, mac=spec.mac, peer_mac=spec.peer_mac))
            fresh[spec.name] = spec.mac
            if spec.kind == "veth" and spec.peer is not None:
                fresh[spec.peer] = spec.peer_mac

    for spec in desired.links:
        have = None if spec.name in fresh else current.get(spec.name)
        if spec.mac is not None and (have.mac if have else fresh.get(spec.name)) != spec.mac:
            ops.append(SetMac(spec.name, spec.mac))
        if (have.master if have else None) != spec.master:
            ops.append(SetMaster(spec.name, spec.master))
        if spec.kind != "external":
            have_addresses = have.addresses if have else ()
            ops += [AddAddress(spec.name, a) for a in spec.addresses if a not in have_addresses]
            if spec.manage_addresses:
                ops += [DeleteAddress(spec.name, a) for a in have_addresses if a not in spec.addresses]
            if (have.egress_rate if have else None) != spec.egress_rate:
                ops.append(SetEgressRate(spec.name, spec.egress_rate))
        if (have.up if have else False) != spec.up:
            ops.append(SetUp(spec.name, spec.up))

    loaded = {(family, name): fp for family, name, fp in observed.tables}
    wanted_tables = {(t.family, t.name) for t in desired.tables}
    for family, name in loaded:
        if (family, name) not in wanted_tables and name.startswith(desired.owned_table_prefixes):
            ops.append(DeleteTable(family, name))
    for table in desired.tables:
        have_fp = loaded.get((table.family, table.name))
        if have_fp != fingerprint(table):
            ops.append(ReplaceTable(table))

    have_sysctls = dict(observed.sysctls)
    ops += [SetSysctl(path, value) for path, value in desired.sysctls if have_sysctls.get(path) != value]
    return tuple(ops)
