"""Render a team's nftables netdev data path (the kernel has no bonding driver here).

Role: turn the desired data path of one team (or one switch LAG) into the text of a
single ``nft -f`` transaction that replaces the team's table atomically:

* the logical interface is a veth pair; what the host sends on ``team0`` arrives at the
  ingress hook of its peer ``team0p``, whose chain ``tx`` forwards each frame to a
  member: the active one (active-backup), one chosen by ``jhash`` over the transmit
  hash policy's fields (balance-xor, see :data:`team_hash.POLICY_FIELDS`), the next one
  (round-robin, ``numgen inc``) or all of them (broadcast, ``dup``);
* every member's ingress chain ``rx_<member>`` forwards received frames to ``team0p``
  (so they come out of ``team0``) or drops them (a backup member in active-backup, or a
  member that is down), except frames addressed to the member's own MAC: those are the
  replies to the link monitor's ARP probes and stay on the member.

The script starts with ``add table`` + ``flush table`` so applying it is idempotent and
a failover is one atomic rule swap. Snapshot-tested.

Must NOT: run nft, touch devices or decide which members are used (``team`` decides).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from nonstop.core.net.team_hash import DEFAULT_SEED, POLICY_FIELDS
from nonstop.core.spec import HashPolicy, TeamMode

IFNAMSIZ = 15
_SAFE = re.compile(r"[^a-zA-Z0-9_]")


def sanitize(name: str) -> str:
    """An nft identifier fragment from an interface name (``-`` and ``.`` become ``_``)."""
    return _SAFE.sub("_", name)


def table_name(kind: str, name: str) -> str:
    """``nonstop_team_<team>`` (hosts) or ``nonstop_lag_<lag>`` (lab switches)."""
    return f"nonstop_{kind}_{sanitize(name)}"


def peer_name(logical: str) -> str:
    """The hidden veth end of a logical interface: ``<name>p``, at most 15 bytes.

    Names too long for a suffix keep a prefix plus a CRC of the full name, so two long
    names that share a prefix still get distinct peers.
    """
    if len(logical) < IFNAMSIZ:
        return f"{logical}p"
    return f"{logical[:9]}p{zlib.crc32(logical.encode()) & 0xFFFFF:05x}"


@dataclass(frozen=True)
class TeamDataPath:
    table: str
    port: str
    """The logical interface's hidden peer (``team0p``): its ingress is the team's egress."""
    mode: TeamMode
    members: tuple[str, ...]
    transmit: tuple[str, ...]
    """Members frames leave by and whose received frames are passed up, in spec order."""
    hash_policy: HashPolicy = HashPolicy.LAYER2_3
    own_macs: tuple[tuple[str, str], ...] = ()
    """(member, its own MAC): frames to that MAC stay on the member (probe replies)."""
    seed: int = DEFAULT_SEED
    priority: int = 0


def _quote(dev: str) -> str:
    return f'"{dev}"'


def _member_map(members: tuple[str, ...]) -> str:
    return "{ " + ", ".join(f"{i} : {_quote(m)}" for i, m in enumerate(members)) + " }"


def _jhash(fields: tuple[str, ...], members: tuple[str, ...], seed: int) -> str:
    return f"fwd to jhash {' . '.join(fields)} mod {len(members)} seed {seed:#x} map {_member_map(members)}"


def transmit_rules(path: TeamDataPath) -> list[str]:
    """Rules of the ``tx`` chain, in order."""
    members = path.transmit
    if not members:
        return ["drop"]
    if path.mode is TeamMode.BROADCAST:
        return [f"dup to {_quote(m)}" for m in members[:-1]] + [f"fwd to {_quote(members[-1])}"]
    if len(members) == 1 or path.mode is TeamMode.ACTIVE_BACKUP:
        return [f"fwd to {_quote(members[0])}"]
    if path.mode is TeamMode.ROUND_ROBIN:
        return [f"fwd to numgen inc mod {len(members)} map {_member_map(members)}"]
    layer2 = _jhash(POLICY_FIELDS[HashPolicy.LAYER2], members, path.seed)
    if path.hash_policy is HashPolicy.LAYER2:
        return [layer2]
    rules = []
    if path.hash_policy is HashPolicy.LAYER3_4:
        # Ports only for unfragmented TCP/UDP/SCTP, like bonding; other IPv4 by addresses.
        rules.append(
            "meta protocol ip meta l4proto { tcp, udp, sctp } ip frag-off & 0x3fff == 0 "
            + _jhash(POLICY_FIELDS[HashPolicy.LAYER3_4], members, path.seed)
        )
        rules.append("meta protocol ip " + _jhash(("ip saddr", "ip daddr"), members, path.seed))
    else:
        rules.append("meta protocol ip " + _jhash(POLICY_FIELDS[HashPolicy.LAYER2_3], members, path.seed))
    return rules + [layer2]


def receive_rules(path: TeamDataPath, member: str) -> list[str]:
    """Rules of one member's ``rx_`` chain, in order."""
    rules = [f"ether daddr {mac} accept" for name, mac in path.own_macs if name == member]
    rules.append(f"fwd to {_quote(path.port)}" if member in path.transmit else "drop")
    return rules


def _chain(name: str, device: str, priority: int, rules: list[str]) -> list[str]:
    return (
        [f"\tchain {name} {{", f"\t\ttype filter hook ingress device {_quote(device)} priority {priority}; policy accept;"]
        + [f"\t\t{rule}" for rule in rules]
        + ["\t}"]
    )


def render_ruleset(path: TeamDataPath) -> str:
    """The whole table as one idempotent ``nft -f`` transaction."""
    lines = [f"add table netdev {path.table}", f"flush table netdev {path.table}", f"table netdev {path.table} {{"]
    lines += _chain("tx", path.port, path.priority, transmit_rules(path))
    for member in path.members:
        lines += _chain(f"rx_{sanitize(member)}", member, path.priority, receive_rules(path, member))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delete(table: str) -> str:
    """Delete the table; also succeeds when it does not exist."""
    return f"add table netdev {table}\ndelete table netdev {table}\n"
