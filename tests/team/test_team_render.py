"""The nft data-path renderer: snapshot per mode, names, idempotent script shape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.net.team_render import (
    TeamDataPath,
    peer_name,
    render_delete,
    render_ruleset,
    sanitize,
    table_name,
    transmit_rules,
)
from nonstop.core.spec import HashPolicy, TeamMode

SNAPSHOTS = Path(__file__).parent / "snapshots"
MACS = (("eth0", "02:00:00:00:00:10"), ("eth1", "02:00:00:00:00:11"))
M = ("eth0", "eth1")

CASES = {
    "active_backup": TeamDataPath("nonstop_team_team0", "team0p", TeamMode.ACTIVE_BACKUP, M, ("eth1",), own_macs=MACS),
    "active_backup_all_down": TeamDataPath("nonstop_team_team0", "team0p", TeamMode.ACTIVE_BACKUP, M, ()),
    "xor_layer2": TeamDataPath("nonstop_team_team0", "team0p", TeamMode.BALANCE_XOR, M, M, HashPolicy.LAYER2),
    "xor_layer2_3": TeamDataPath("nonstop_team_team0", "team0p", TeamMode.BALANCE_XOR, M, M, HashPolicy.LAYER2_3),
    "xor_layer3_4": TeamDataPath("nonstop_team_team0", "team0p", TeamMode.BALANCE_XOR, M, M, HashPolicy.LAYER3_4),
    "xor_one_left": TeamDataPath("nonstop_team_team0", "team0p", TeamMode.BALANCE_XOR, M, ("eth1",)),
    "round_robin": TeamDataPath("nonstop_team_team0", "team0p", TeamMode.ROUND_ROBIN, M + ("eth2",), M + ("eth2",)),
    "broadcast": TeamDataPath("nonstop_team_team0", "team0p", TeamMode.BROADCAST, M + ("eth2",), M + ("eth2",)),
    "switch_lag": TeamDataPath("nonstop_lag_lag_h1", "lag-h1p", TeamMode.BALANCE_XOR, ("sw0-h1-e0", "sw0-h1-e1"),
                               ("sw0-h1-e0", "sw0-h1-e1"), HashPolicy.LAYER3_4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ruleset_snapshot(name: str) -> None:
    rendered = render_ruleset(CASES[name])
    path = SNAPSHOTS / f"{name}.nft"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(rendered)
    assert rendered == path.read_text()


def test_script_replaces_the_table_atomically() -> None:
    lines = render_ruleset(CASES["active_backup"]).splitlines()
    assert lines[:2] == ["add table netdev nonstop_team_team0", "flush table netdev nonstop_team_team0"]
    assert render_delete("nonstop_team_x") == "add table netdev nonstop_team_x\ndelete table netdev nonstop_team_x\n"


def test_backup_member_drops_except_its_own_probe_replies() -> None:
    text = render_ruleset(CASES["active_backup"])
    rx_eth0 = text.split("chain rx_eth0 {")[1].split("}")[0]
    assert "ether daddr 02:00:00:00:00:10 accept" in rx_eth0 and rx_eth0.rstrip().endswith("drop")
    rx_eth1 = text.split("chain rx_eth1 {")[1].split("}")[0]
    assert rx_eth1.rstrip().endswith('fwd to "team0p"')


def test_nothing_usable_drops_everything() -> None:
    assert transmit_rules(CASES["active_backup_all_down"]) == ["drop"]


@pytest.mark.parametrize("name", ["team0", "a", "x" * 14, "x" * 15, "bond-uplink-012"])
def test_peer_names_fit_ifnamsiz_and_differ(name: str) -> None:
    peer = peer_name(name)
    assert len(peer) <= 15 and peer != name
    assert peer == peer_name(name)


def test_long_names_with_a_shared_prefix_get_distinct_peers() -> None:
    assert peer_name("uplink-team-001") != peer_name("uplink-team-002")


def test_table_names_are_nft_identifiers() -> None:
    assert table_name("team", "up-link.0") == "nonstop_team_up_link_0"
    assert sanitize("sw0-h1") == "sw0_h1"


names = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(lambda n: n != "tp"),
                min_size=1, max_size=4, unique=True)


@given(members=names, data=st.data(), mode=st.sampled_from(list(TeamMode)), policy=st.sampled_from(list(HashPolicy)))
def test_every_member_gets_a_chain_and_only_transmit_members_get_frames(
    members: list[str], data: st.DataObject, mode: TeamMode, policy: HashPolicy
) -> None:
    transmit = tuple(m for m in members if data.draw(st.booleans()))
    if mode is TeamMode.ACTIVE_BACKUP:
        transmit = transmit[:1]
    path = TeamDataPath("nonstop_team_t", "tp", mode, tuple(members), transmit, policy)
    text = render_ruleset(path)
    tx = "\n".join(transmit_rules(path))
    for member in members:
        assert f'device "{member}"' in text
        assert (f'"{member}"' in tx) == (member in transmit)
    assert text.count(f'fwd to "{path.port}"') == len(transmit)
