"""Transmit hashes: bonding's xmit_hash_policy and nft's jhash, table-driven + properties."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core.net.team_hash import (
    ETH_P_IP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    FrameKey,
    bonding_hash,
    bonding_member_index,
    jhash,
    nft_member_index,
    nft_registers,
)
from nonstop.core.spec import HashPolicy

A = "02:00:00:00:00:01"
B = "02:00:00:00:00:02"


def _le(ip: str) -> int:
    return int.from_bytes(ipaddress.IPv4Address(ip).packed, "little")


def _fold(value: int) -> int:
    value ^= value >> 16
    value ^= value >> 8
    return value


# Expected values written from the kernel's formulas in bond_main.c, step by step.
BONDING_CASES = [
    ("layer2", FrameKey(A, B), 0x01 ^ 0x02 ^ ETH_P_IP),
    ("layer2 arp", FrameKey(A, B, ethertype=0x0806), 0x01 ^ 0x02 ^ 0x0806),
    (
        "layer2+3",
        FrameKey(A, B, src_ip="10.0.0.1", dst_ip="10.0.0.2"),
        _fold((0x01 ^ 0x02 ^ ETH_P_IP) ^ _le("10.0.0.1") ^ _le("10.0.0.2")),
    ),
    (
        "layer3+4 tcp",
        FrameKey(A, B, src_ip="10.0.0.1", dst_ip="10.0.0.2", protocol=IPPROTO_TCP, src_port=1000, dst_port=80),
        _fold(int.from_bytes((1000).to_bytes(2, "big") + (80).to_bytes(2, "big"), "little") ^ _le("10.0.0.1") ^ _le("10.0.0.2")) >> 1,
    ),
    (
        "layer3+4 icmp has no ports",
        FrameKey(A, B, src_ip="10.0.0.1", dst_ip="10.0.0.2", protocol=1),
        _fold(_le("10.0.0.1") ^ _le("10.0.0.2")) >> 1,
    ),
    ("layer3+4 non-ip falls back to layer2", FrameKey(A, B, ethertype=0x0806), 0x01 ^ 0x02 ^ 0x0806),
]
POLICY_OF = {"layer2": HashPolicy.LAYER2, "layer2+3": HashPolicy.LAYER2_3, "layer3+4": HashPolicy.LAYER3_4}


@pytest.mark.parametrize(("case", "key", "expected"), BONDING_CASES, ids=[c[0] for c in BONDING_CASES])
def test_bonding_hash_matches_kernel_formula(case: str, key: FrameKey, expected: int) -> None:
    policy = POLICY_OF[case.split()[0]]
    assert bonding_hash(policy, key) == expected


def test_layer3_4_discards_lowest_bit_so_even_ports_still_spread() -> None:
    # Sequential even source ports must not all land on member 0 of 2.
    keys = [FrameKey(A, B, src_ip="10.0.0.1", dst_ip="10.0.0.2", protocol=IPPROTO_TCP, src_port=p, dst_port=80)
            for p in range(10000, 10400, 2)]
    picks = [bonding_member_index(HashPolicy.LAYER3_4, k, 2) for k in keys]
    assert 0.3 < sum(picks) / len(picks) < 0.7


# Bob Jenkins' lookup3 hashlittle() test vectors (lookup3.c, driver5); Linux jhash is hashlittle.
@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"", 0, 0xDEADBEEF),
        (b"", 0xDEADBEEF, 0xBD5B7DDE),
        (b"Four score and seven years ago", 0, 0x17770551),
        (b"Four score and seven years ago", 1, 0xCD628161),
    ],
)
def test_jhash_reference_vectors(data: bytes, seed: int, expected: int) -> None:
    assert jhash(data, seed) == expected


def test_nft_registers_pad_each_field_to_32_bits() -> None:
    key = FrameKey(A, B, src_ip="10.0.0.1", dst_ip="10.0.0.2", protocol=IPPROTO_UDP, src_port=0x1234, dst_port=0x0050)
    assert nft_registers(HashPolicy.LAYER2, key) == bytes.fromhex("020000000001 0000 020000000002 0000".replace(" ", ""))
    assert nft_registers(HashPolicy.LAYER3_4, key) == bytes.fromhex("0a000001 0a000002 12340000 00500000".replace(" ", ""))


def test_empty_team_cannot_transmit() -> None:
    with pytest.raises(ValueError):
        nft_member_index(HashPolicy.LAYER2, FrameKey(A, B), 0)
    with pytest.raises(ValueError):
        bonding_member_index(HashPolicy.LAYER2, FrameKey(A, B), 0)


macs = st.builds(lambda b: ":".join(f"{x:02x}" for x in b), st.binary(min_size=6, max_size=6))
ips = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ports = st.integers(1, 65535)
keys = st.builds(FrameKey, macs, macs, st.just(ETH_P_IP), ips, ips, st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]), ports, ports)


@given(key=keys, policy=st.sampled_from(list(HashPolicy)), members=st.integers(1, 8))
def test_hashes_are_deterministic_and_in_range(key: FrameKey, policy: HashPolicy, members: int) -> None:
    for fn in (nft_member_index, bonding_member_index):
        first = fn(policy, key, members)
        assert 0 <= first < members
        assert fn(policy, FrameKey(**key.__dict__), members) == first


@settings(max_examples=30)
@given(src=ips, dst=ips, base=st.integers(1024, 60000), members=st.integers(2, 4))
def test_layer3_4_spreads_flows_of_one_host_pair(src: str, dst: str, base: int, members: int) -> None:
    flows = [FrameKey(A, B, src_ip=src, dst_ip=dst, protocol=IPPROTO_TCP, src_port=base + i, dst_port=443)
             for i in range(400)]
    for fn in (nft_member_index, bonding_member_index):
        counts = [0] * members
        for key in flows:
            counts[fn(HashPolicy.LAYER3_4, key, members)] += 1
        assert min(counts) >= 0.6 * len(flows) / members, (fn.__name__, counts)
