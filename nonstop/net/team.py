"""NIC teams and switch LAGs on a kernel without bonding: veth + nftables netdev ``fwd``.

Role: the shell that creates, inspects and removes a team's logical interface and its
data path inside a host's network namespace, through netlink (pyroute2) and one
``nft -f`` transaction:

* ``setup_team(netns, team)`` creates the veth pair ``team.name`` / ``peer_name(...)``
  (the host's addresses and bridge port go on ``team.name``), brings the members up and
  installs the initial data path chosen by the pure state machine from the members'
  carrier (members with carrier start up, as when bonding enslaves them);
* ``teardown_team`` removes the table and the pair and leaves the members alone;
* ``team_status`` reports what the kernel really does (which members the rules use —
  read back from the table by ``chain_rules`` / ``forward_targets`` — each member's
  carrier and counters);
* ``setup_switch_lag`` is the same machinery on a lab switch: a veth "lag" port on the
  bridge, forwarded from/to two or more switch ports (a static LAG, balance-xor).

Live monitoring and failover are ``nonstop.net.team_daemon``'s job. All functions are
idempotent. Must NOT: choose members itself (``nonstop.core.net.team`` does), shell out
to ``ip``, or touch links that are not the team's own veth pair (members belong to the
fabric: they are only set up, never created or deleted).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2 import IPRoute

from nonstop.core.net.team import TeamConfig, TeamState, initial_state, transmit_members
from nonstop.core.net.team_render import (
    TeamDataPath,
    peer_name,
    render_delete,
    render_ruleset,
    sanitize,
    table_name,
)
from nonstop.core.spec import HashPolicy, TeamMode, TeamSpec
from nonstop.net import nft
from nonstop.net.netns import open_iproute

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
COUNTERS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped", "rx_errors", "tx_errors")


class TeamSetupError(RuntimeError):
    pass


def open_netns(netns: str | None) -> IPRoute:
    return open_iproute(netns)


def link_info(ipr: IPRoute, name: str) -> dict[str, Any] | None:
    """Index, MAC, carrier and counters of one link, or None when it does not exist."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    msg = ipr.get_links(found[0])[0]
    flags = int(msg["flags"])
    stats = msg.get("IFLA_STATS64") or {}
    return {
        "index": found[0],
        "mac": msg.get("IFLA_ADDRESS"),
        "up": bool(flags & IFF_UP),
        "carrier": bool(flags & IFF_UP and flags & IFF_LOWER_UP),
        "operstate": msg.get("IFLA_OPERSTATE"),
        "master": msg.get("IFLA_MASTER"),
        "counters": {key: int(stats.get(key, 0)) for key in COUNTERS},
    }


def _require(ipr: IPRoute, names: Iterable[str], where: str) -> dict[str, dict[str, Any]]:
    infos = {}
    for name in names:
        info = link_info(ipr, name)
        if info is None:
            raise TeamSetupError(f"member NIC {name!r} does not exist in {where}")
        infos[name] = info
    return infos


def _ensure_pair(ipr: IPRoute, logical: str, mac: str | None) -> None:
    peer = peer_name(logical)
    if not ipr.link_lookup(ifname=logical):
        if ipr.link_lookup(ifname=peer):
            ipr.link("del", index=ipr.link_lookup(ifname=peer)[0])  # half-made pair from a crash
        ipr.link("add", ifname=logical, kind="veth", peer=peer)
    if mac is not None:
        index = ipr.link_lookup(ifname=logical)[0]
        if (link_info(ipr, logical) or {}).get("mac") != mac.lower():
            ipr.link("set", index=index, address=mac)
    for name in (peer, logical):
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")


def data_path_for(
    kind: str,
    config: TeamConfig,
    state: TeamState,
    port: str,
    own_macs: Mapping[str, str] | None = None,
) -> TeamDataPath:
    """The data path the state machine's current decision calls for."""
    return TeamDataPath(
        table=table_name(kind, config.name),
        port=port,
        mode=config.mode,
        members=config.members,
        transmit=transmit_members(config, state),
        hash_policy=config.hash_policy,
        own_macs=tuple(sorted((own_macs or {}).items())),
    )


def probe_macs(infos: Mapping[str, dict[str, Any]], team_mac: str | None) -> dict[str, str]:
    """Members' own MACs that probe replies come back to (never the team's own MAC)."""
    return {m: i["mac"] for m, i in infos.items() if i.get("mac") and i["mac"] != team_mac}


def setup_team(
    netns: str, team: TeamSpec, *, mac: str | None = None, speeds: Mapping[str, int | None] | None = None
) -> str:
    """Create team ``team.name`` in ``netns`` over its existing member NICs; return its name."""
    config = TeamConfig.from_spec(team, speeds)
    with open_netns(netns) as ipr:
        infos = _require(ipr, team.members, f"namespace {netns}")
        for info in infos.values():
            if not info["up"]:
                ipr.link("set", index=info["index"], state="up")
        _ensure_pair(ipr, team.name, mac)
        time.sleep(0.05)  # carrier of freshly raised veths settles within a few ms
        infos = _require(ipr, team.members, f"namespace {netns}")
        team_mac = (link_info(ipr, team.name) or {}).get("mac")
    decision = initial_state(config, {m: i["carrier"] for m, i in infos.items()}, time.monotonic())
    path = data_path_for("team", config, decision.state, peer_name(team.name), probe_macs(infos, team_mac))
    # Delete + create in one transaction: a re-setup with other members leaves no stale chain.
    nft.apply(netns, render_delete(path.table) + render_ruleset(path))
    return team.name


def teardown_team(netns: str, team: TeamSpec) -> None:
    """Remove the team's table and veth pair; members stay. Succeeds when already gone."""
    try:
        nft.apply(netns, render_delete(table_name("team", team.name)))
    except FileNotFoundError:
        return  # the namespace is gone, and everything in it
    _delete_pair(netns, team.name)


def _delete_pair(netns: str, logical: str) -> None:
    with open_netns(netns) as ipr:
        for name in (logical, peer_name(logical)):
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=found[0])


def _status(netns: str, table: str, logical: str, members: list[str], mode: str) -> dict[str, Any]:
    objects = nft.list_table(netns, "netdev", table)
    chains = chain_rules(objects or [])
    port = peer_name(logical)
    transmit = [t for t in forward_targets(chains.get("tx", [])) if t in members]
    with open_netns(netns) as ipr:
        logical_info = link_info(ipr, logical)
        member_infos = {m: link_info(ipr, m) for m in members}
    status: dict[str, Any] = {
        "name": logical,
        "netns": netns,
        "mode": mode,
        "peer": port,
        "table": table,
        "installed": objects is not None and logical_info is not None,
        "logical": logical_info,
        "transmit": transmit,
        "active": transmit[0] if mode == TeamMode.ACTIVE_BACKUP.value and transmit else None,
        "members": {},
    }
    for member, info in member_infos.items():
        rx = forward_targets(chains.get(f"rx_{sanitize(member)}", []))
        status["members"][member] = {
            "exists": info is not None,
            "carrier": bool(info and info["carrier"]),
            "mac": info["mac"] if info else None,
            "transmitting": member in transmit,
            "receiving": port in rx,
            "counters": info["counters"] if info else {},
        }
    return status


def chain_rules(objects: list[dict[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    """Chain name -> its rules' expression lists, from ``nft.list_table`` output."""
    chains: dict[str, list[list[dict[str, Any]]]] = {}
    for obj in objects:
        if "chain" in obj:
            chains.setdefault(obj["chain"]["name"], [])
        elif "rule" in obj:
            chains.setdefault(obj["rule"]["chain"], []).append(obj["rule"]["expr"])
    return chains


def forward_targets(rules: list[list[dict[str, Any]]]) -> list[str]:
    """Every device a chain's ``fwd``/``dup`` statements can send a frame to, in order."""
    targets: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("fwd", "dup") and isinstance(value, dict):
                    dev = value.get("dev", value.get("addr"))  # nft 1.0.6 prints "dup to" as addr
                    if isinstance(dev, str):
                        targets.append(dev)
                    else:
                        walk(dev)
                else:
                    walk(value)
        elif isinstance(node, list):
            if len(node) == 2 and isinstance(node[0], int) and isinstance(node[1], str):
                targets.append(node[1])  # a map element: [index, "device"]
            else:
                for item in node:
                    walk(item)

    walk(rules)
    return list(dict.fromkeys(targets))


def team_status(netns: str, team: TeamSpec) -> dict[str, Any]:
    """What the kernel does for this team now (the daemon's status file adds history)."""
    return _status(netns, table_name("team", team.name), team.name, list(team.members), team.mode.value)


# ------------------------------------------------------------------ switch LAG


def lag_config(name: str, ports: list[str], hash_policy: HashPolicy = HashPolicy.LAYER3_4) -> TeamConfig:
    return TeamConfig(name=name, mode=TeamMode.BALANCE_XOR, members=tuple(ports), hash_policy=hash_policy)


def setup_switch_lag(
    fabric_ns: str, bridge: str, ports: list[str], name: str, *, hash_policy: HashPolicy = HashPolicy.LAYER3_4
) -> str:
    """Aggregate switch ``ports`` of ``bridge`` into one static LAG port ``name``.

    The ports leave the bridge; the veth ``name`` joins it in their place, and nft
    forwards frames between ``peer_name(name)`` and the ports (balance-xor over the ports
    with carrier; a port losing carrier is dropped from the hash by
    ``team_daemon --lag``, or by calling this again).
    """
    config = lag_config(name, ports, hash_policy)
    with open_netns(fabric_ns) as ipr:
        bridge_index = ipr.link_lookup(ifname=bridge)
        if not bridge_index:
            raise TeamSetupError(f"bridge {bridge!r} does not exist in {fabric_ns}")
        infos = _require(ipr, ports, f"namespace {fabric_ns}")
        for info in infos.values():
            if info["master"]:
                ipr.link("set", index=info["index"], master=0)
            if not info["up"]:
                ipr.link("set", index=info["index"], state="up")
        _ensure_pair(ipr, name, None)
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], master=bridge_index[0])
        time.sleep(0.05)
        infos = _require(ipr, ports, f"namespace {fabric_ns}")
    decision = initial_state(config, {p: i["carrier"] for p, i in infos.items()}, time.monotonic())
    path = data_path_for("lag", config, decision.state, peer_name(name))
    nft.apply(fabric_ns, render_delete(path.table) + render_ruleset(path))
    return name


def teardown_switch_lag(fabric_ns: str, name: str) -> None:
    """Remove the LAG's table and veth pair (its former ports stay, off the bridge)."""
    try:
        nft.apply(fabric_ns, render_delete(table_name("lag", name)))
    except FileNotFoundError:
        return
    _delete_pair(fabric_ns, name)


def switch_lag_status(fabric_ns: str, name: str, ports: list[str]) -> dict[str, Any]:
    return _status(fabric_ns, table_name("lag", name), name, ports, TeamMode.BALANCE_XOR.value)
