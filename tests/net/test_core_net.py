"""Pure host-networking core: names, MACs, IPAM and convergence (no kernel, no mocks).

Convergence is checked against a small interpreter of the operations over ObservedState
(the kernel's semantics for the few operations we use): from any partial state, applying
the plan reaches a state whose plan is empty.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core.net import ipam, names
from nonstop.core.net.converge import MissingExternalLinkError, converge
from nonstop.core.net.model import (
    AddAddress,
    CreateLink,
    DeleteAddress,
    DeleteLink,
    DeleteTable,
    DesiredState,
    LinkSpec,
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
from nonstop.core.net.nftables import fingerprint, nat_table, policing_table

# ----------------------------------------------------------------------------- names

short_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=15)


@given(short_names)
def test_interface_names_fit_and_are_stable(name: str) -> None:
    for made in (names.bridge_name(name), names.uplink_bridge_name(name), *names.patch_names(name)):
        assert len(made) <= names.IFNAMSIZ
        assert made.startswith(("nb-", "nu-", "pa-", "pb-"))
    assert names.bridge_name(name) == names.bridge_name(name)


def test_long_names_stay_distinct() -> None:
    a, b = names.bridge_name("production-aaaa"), names.bridge_name("production-aaab")
    assert a != b and len(a) == len(b) == 15


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=30), st.integers(0, 16))
def test_vnic_mac_is_locally_administered_unicast_and_deterministic(cluster: str, guest: str, index: int) -> None:
    mac = names.vnic_mac(cluster, guest, index)
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert mac == names.vnic_mac(cluster, guest, index)
    tap, peer = names.vnic_names(cluster, guest, index, "tap")
    host_end, guest_end = names.vnic_names(cluster, guest, index, "veth")
    assert peer is None and guest_end is not None
    assert max(len(tap), len(host_end), len(guest_end)) <= 15


def test_vnic_macs_differ_per_nic_and_guest() -> None:
    macs = {names.vnic_mac("lab", g, i) for g in ("web-0", "web-1", "api-0") for i in range(4)}
    assert len(macs) == 12
    with pytest.raises(ValueError):
        names.vnic_names("lab", "g", 0, "macvtap")


# ------------------------------------------------------------------------------ IPAM


@pytest.mark.parametrize(
    ("subnet", "gateway", "taken", "owner", "expected"),
    [
        ("198.19.20.0/29", None, {}, "a", "198.19.20.2"),  # .0 network, .1 default gateway
        ("198.19.20.0/29", "198.19.20.6", {}, "a", "198.19.20.1"),
        ("198.19.20.0/29", None, {"198.19.20.2": "a"}, "a", "198.19.20.2"),  # asks twice: same answer
        ("198.19.20.0/29", None, {"198.19.20.2": "a"}, "b", "198.19.20.3"),
        ("198.19.20.0/29", None, {"198.19.20.3": "x"}, "b", "198.19.20.2"),  # a released hole is reused
    ],
)
def test_ipam_choose(subnet: str, gateway: str | None, taken: dict[str, str], owner: str, expected: str) -> None:
    assert ipam.choose(subnet, gateway, taken, owner) == expected


def test_ipam_exhausted() -> None:
    taken = {a: f"g{i}" for i, a in enumerate(ipam.candidates("198.19.20.0/29", None))}
    assert len(taken) == 5
    with pytest.raises(ipam.AddressPoolExhaustedError):
        ipam.choose("198.19.20.0/29", None, taken, "late")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=60))
def test_ipam_never_hands_out_an_address_twice(steps: list[tuple[bool, int]]) -> None:
    subnet = "198.19.40.0/28"
    taken: dict[str, str] = {}
    for allocate, who in steps:
        owner = f"g{who}"
        if allocate:
            try:
                address = ipam.choose(subnet, None, taken, owner)
            except ipam.AddressPoolExhaustedError:
                assert len(taken) == 13 and owner not in taken.values()
                continue
            assert taken.get(address, owner) == owner
            assert address not in ipam.reserved(subnet, None)
            assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
            taken[address] = owner
        else:
            taken = {a: o for a, o in taken.items() if o != owner}
        assert len(set(taken.values())) == len(taken)  # one address per owner


# ----------------------------------------------------------------------- convergence


def interpret(observed: ObservedState, ops: tuple[Op, ...], desired: DesiredState) -> ObservedState:
    """The kernel, for our operations (enough to check convergence, nothing more)."""
    links = {link.name: link for link in observed.links}
    tables = {(f, n): fp for f, n, fp in observed.tables}
    sysctls = dict(observed.sysctls)
    for op in ops:
        if isinstance(op, CreateLink):
            assert op.name not in links, f"create over an existing {op.name}"
            links[op.name] = ObservedLink(op.name, op.kind, None, op.mac or "kernel", False)
            if op.peer:
                assert op.peer not in links
                links[op.peer] = ObservedLink(op.peer, "veth", None, op.peer_mac or "kernel", False)
        elif isinstance(op, DeleteLink):
            gone = links.pop(op.name)
            spec = next((s for s in desired.links if s.name == op.name), None)
            twin = spec.peer if spec else None
            if gone.kind == "veth" and twin in links:
                links.pop(twin)  # deleting one end of a veth deletes both
        elif isinstance(op, SetMac):
            links[op.name] = replace(links[op.name], mac=op.mac)
        elif isinstance(op, SetMaster):
            assert op.master is None or op.master in links
            links[op.name] = replace(links[op.name], master=op.master)
        elif isinstance(op, SetUp):
            links[op.name] = replace(links[op.name], up=op.up)
        elif isinstance(op, AddAddress):
            links[op.name] = replace(links[op.name], addresses=(*links[op.name].addresses, op.address))
        elif isinstance(op, DeleteAddress):
            links[op.name] = replace(links[op.name], addresses=tuple(a for a in links[op.name].addresses if a != op.address))
        elif isinstance(op, SetEgressRate):
            links[op.name] = replace(links[op.name], egress_rate=op.rate)
        elif isinstance(op, ReplaceTable):
            tables[(op.table.family, op.table.name)] = fingerprint(op.table)
        elif isinstance(op, DeleteTable):
            tables.pop((op.family, op.name))
        elif isinstance(op, SetSysctl):
            sysctls[op.path] = op.value
    return ObservedState(
        links=tuple(links.values()),
        tables=tuple((f, n, fp) for (f, n), fp in tables.items()),
        sysctls=tuple(sysctls.items()),
    )


def sample_desired(networks: int, rate: int | None) -> DesiredState:
    links: list[LinkSpec] = [LinkSpec("eth0", "external", master="nu-eth0"), LinkSpec("nu-eth0", "bridge", mac="02:00:00:00:00:01", manage_addresses=False)]
    tables = []
    for i in range(networks):
        bridge = f"nb-n{i}"
        links.append(LinkSpec(bridge, "bridge", mac=f"02:00:00:00:01:{i:02x}", addresses=(f"198.19.{i}.1/24",)))
        links.append(LinkSpec(f"pa-n{i}", "veth", peer=f"pb-n{i}", master=bridge))
        links.append(LinkSpec(f"pb-n{i}", "veth", peer=f"pa-n{i}", master="nu-eth0"))
        links.append(LinkSpec(f"nt{i}", "tap", master=bridge, egress_rate=rate))
        tables.append(nat_table(f"nonstop_nat_n{i}", bridge, f"198.19.{i}.0/24", "nu-eth0"))
        if rate:
            tables.append(policing_table(f"nonstop_bw_nt{i}", f"nt{i}", rate))
    return DesiredState(
        links=tuple(links), tables=tuple(tables), sysctls=(("net/ipv4/ip_forward", "1"),),
        owned_link_prefixes=("nb-", "nu-", "pa-", "pb-"), owned_table_prefixes=("nonstop_nat_",),
    )


@st.composite
def partial_states(draw: st.DrawFn) -> tuple[DesiredState, ObservedState]:
    desired = sample_desired(draw(st.integers(1, 3)), draw(st.sampled_from([None, 125_000])))
    start = interpret(ObservedState(links=(ObservedLink("eth0", "veth", None, "aa", True),)), converge(desired, ObservedState(links=(ObservedLink("eth0", "veth", None, "aa", True),))), desired)
    links = []
    for link in start.links:
        if link.name != "eth0" and draw(st.integers(0, 3)) == 0:
            continue  # lost
        if draw(st.booleans()):
            link = replace(link, up=draw(st.booleans()), master=draw(st.sampled_from([None, link.master])),
                           addresses=draw(st.sampled_from([(), link.addresses, ("198.18.99.9/24",)])),
                           mac=draw(st.sampled_from([link.mac, "02:ff:ff:ff:ff:ff"])))
        links.append(link)
    if draw(st.booleans()):
        links.append(ObservedLink("nb-stale", "bridge", None, "x", True))
    links.append(ObservedLink("docker0", "bridge", None, "y", True))  # not ours: never touched
    tables = [t for t in start.tables if draw(st.booleans())]
    if draw(st.booleans()):
        tables.append(("ip", "nonstop_nat_stale", frozenset()))
    if draw(st.booleans()) and tables:
        tables[0] = (tables[0][0], tables[0][1], frozenset({("rule", "x", "old")}))
    return desired, ObservedState(links=tuple(links), tables=tuple(tables), sysctls=(("net/ipv4/ip_forward", draw(st.sampled_from(["0", "1"]))),))


@settings(max_examples=150, deadline=None)
@given(partial_states())
def test_converges_from_any_partial_state(case: tuple[DesiredState, ObservedState]) -> None:
    desired, observed = case
    after = interpret(observed, converge(desired, observed), desired)
    assert converge(desired, after) == ()
    names_after = {link.name for link in after.links}
    assert "docker0" in names_after and "nb-stale" not in names_after
    assert {s.name for s in desired.links} <= names_after
    assert "nonstop_nat_stale" not in {n for _, n, _ in after.tables}


def test_matching_state_needs_nothing_and_empty_state_needs_everything() -> None:
    desired = sample_desired(2, 125_000)
    eth0 = ObservedState(links=(ObservedLink("eth0", "veth", None, "aa", True),))
    ops = converge(desired, eth0)
    created = {op.name for op in ops if isinstance(op, CreateLink)}
    assert created == {"nu-eth0", "nb-n0", "nb-n1", "pa-n0", "pa-n1", "nt0", "nt1"}
    assert sum(isinstance(op, ReplaceTable) for op in ops) == 4
    assert converge(desired, interpret(eth0, ops, desired)) == ()


def test_uplink_must_exist_and_unmanaged_addresses_stay() -> None:
    desired = sample_desired(1, None)
    with pytest.raises(MissingExternalLinkError):
        converge(desired, ObservedState())
    observed = interpret(ObservedState(links=(ObservedLink("eth0", "veth", None, "aa", True),)), converge(desired, ObservedState(links=(ObservedLink("eth0", "veth", None, "aa", True),))), desired)
    with_host_address = ObservedState(
        links=tuple(replace(link, addresses=("198.18.0.10/24",)) if link.name == "nu-eth0" else link for link in observed.links),
        tables=observed.tables, sysctls=observed.sysctls,
    )
    assert converge(desired, with_host_address) == ()
