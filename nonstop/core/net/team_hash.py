"""Transmit hash functions for NIC teaming, pure and shared by both data paths.

Role: say which header fields each transmit hash policy (layer2, layer2+3, layer3+4)
uses, compute Linux bonding's ``xmit_hash_policy`` hash exactly as
``drivers/net/bonding/bond_main.c`` does (for the bonding-driver data path and for
predicting it), and compute the nftables ``jhash ... mod N seed S`` value the netdev
``fwd`` data path uses on kernels without bonding (Bob Jenkins' lookup3 ``jhash`` of the
nft registers, scaled with ``reciprocal_scale``), so tests can predict which member a
flow leaves by.

Must NOT: do I/O, read a clock, or know how rules are installed (``team_render`` renders
rules from :data:`POLICY_FIELDS`). Byte order is the one of x86 (little endian), where
the kernel reads packet bytes as host-order 32-bit words.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from nonstop.core.spec import HashPolicy

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132
PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})

JHASH_INITVAL = 0xDEADBEEF
DEFAULT_SEED = 0x6E6F6E73
"""Fixed jhash seed ("nons"): the flow-to-member mapping survives restarts, as with bonding."""

_U32 = 0xFFFFFFFF

POLICY_FIELDS: dict[HashPolicy, tuple[str, ...]] = {
    HashPolicy.LAYER2: ("ether saddr", "ether daddr"),
    HashPolicy.LAYER2_3: ("ether saddr", "ether daddr", "ip saddr", "ip daddr"),
    HashPolicy.LAYER3_4: ("ip saddr", "ip daddr", "th sport", "th dport"),
}
"""nft payload fields hashed per policy, in register order (bonding's fields, IPv4)."""

_FIELD_WIDTH = {"ether saddr": 6, "ether daddr": 6, "ip saddr": 4, "ip daddr": 4, "th sport": 2, "th dport": 2}


@dataclass(frozen=True)
class FrameKey:
    """The header fields a transmit hash may look at; absent layers are ``None``."""

    src_mac: str
    dst_mac: str
    ethertype: int = ETH_P_IP
    src_ip: str | None = None
    dst_ip: str | None = None
    protocol: int | None = None
    src_port: int | None = None
    dst_port: int | None = None

    def is_ipv4(self) -> bool:
        return self.ethertype == ETH_P_IP and self.src_ip is not None and self.dst_ip is not None

    def has_ports(self) -> bool:
        return self.is_ipv4() and self.protocol in PORT_PROTOCOLS and self.src_port is not None

    def field_bytes(self, field: str) -> bytes:
        """One nft payload field as it lands in a register (network byte order)."""
        if field == "ether saddr":
            return mac_bytes(self.src_mac)
        if field == "ether daddr":
            return mac_bytes(self.dst_mac)
        if field in ("ip saddr", "ip daddr"):
            address = self.src_ip if field == "ip saddr" else self.dst_ip
            return ipaddress.IPv4Address(address or "0.0.0.0").packed
        if field in ("th sport", "th dport"):
            port = self.src_port if field == "th sport" else self.dst_port
            return (port or 0).to_bytes(2, "big")
        raise KeyError(f"unknown hash field {field!r}")


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"expected a MAC address like 02:00:00:00:00:01, got {mac!r}")
    return bytes(int(p, 16) for p in parts)


# ------------------------------------------------------------------ Linux bonding


def _eth_hash(key: FrameKey) -> int:
    # bond_eth_hash: h_dest[5] ^ h_source[5] ^ be16_to_cpu(h_proto)
    return mac_bytes(key.dst_mac)[5] ^ mac_bytes(key.src_mac)[5] ^ key.ethertype


def _host_u32(data: bytes) -> int:
    return int.from_bytes(data, "little")


def bonding_hash(policy: HashPolicy, key: FrameKey) -> int:
    """``__bond_xmit_hash`` for IPv4/Ethernet: layer2, layer2+3 and layer3+4.

    Non-IP frames fall back to the layer2 hash under every policy, as in the kernel.
    """
    if policy is HashPolicy.LAYER2 or not key.is_ipv4():
        return _eth_hash(key)
    if policy is HashPolicy.LAYER2_3:
        value = _eth_hash(key)
    elif key.has_ports():
        # flow.ports.ports: the two big-endian ports read as one host-order word
        value = _host_u32((key.src_port or 0).to_bytes(2, "big") + (key.dst_port or 0).to_bytes(2, "big"))
    else:
        value = 0
    # bond_ip_hash
    value ^= _host_u32(ipaddress.IPv4Address(key.dst_ip).packed) ^ _host_u32(ipaddress.IPv4Address(key.src_ip).packed)
    value &= _U32
    value ^= value >> 16
    value ^= value >> 8
    if policy is HashPolicy.LAYER3_4:
        return value >> 1  # "discard lowest hash bit to deal with the common even ports pattern"
    return value


def bonding_member_index(policy: HashPolicy, key: FrameKey, members: int) -> int:
    """The slave index bonding's balance-xor picks: ``hash % count``."""
    if members < 1:
        raise ValueError("a team needs at least one usable member to transmit")
    return bonding_hash(policy, key) % members


# ------------------------------------------------------------------- nftables jhash


def _rol32(word: int, shift: int) -> int:
    return ((word << shift) | (word >> (32 - shift))) & _U32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _U32; a ^= _rol32(c, 4); c = (c + b) & _U32  # noqa: E702
    b = (b - a) & _U32; b ^= _rol32(a, 6); a = (a + c) & _U32  # noqa: E702
    c = (c - b) & _U32; c ^= _rol32(b, 8); b = (b + a) & _U32  # noqa: E702
    a = (a - c) & _U32; a ^= _rol32(c, 16); c = (c + b) & _U32  # noqa: E702
    b = (b - a) & _U32; b ^= _rol32(a, 19); a = (a + c) & _U32  # noqa: E702
    c = (c - b) & _U32; c ^= _rol32(b, 4); b = (b + a) & _U32  # noqa: E702
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c ^= b; c = (c - _rol32(b, 14)) & _U32  # noqa: E702
    a ^= c; a = (a - _rol32(c, 11)) & _U32  # noqa: E702
    b ^= a; b = (b - _rol32(a, 25)) & _U32  # noqa: E702
    c ^= b; c = (c - _rol32(b, 16)) & _U32  # noqa: E702
    a ^= c; a = (a - _rol32(c, 4)) & _U32  # noqa: E702
    b ^= a; b = (b - _rol32(a, 14)) & _U32  # noqa: E702
    c ^= b; c = (c - _rol32(b, 24)) & _U32  # noqa: E702
    return a, b, c


def jhash(data: bytes, seed: int) -> int:
    """Linux ``jhash()`` (include/linux/jhash.h), byte for byte on a little-endian CPU."""
    length = len(data)
    a = b = c = (JHASH_INITVAL + length + seed) & _U32
    offset = 0
    while length > 12:
        a = (a + _host_u32(data[offset : offset + 4])) & _U32
        b = (b + _host_u32(data[offset + 4 : offset + 8])) & _U32
        c = (c + _host_u32(data[offset + 8 : offset + 12])) & _U32
        a, b, c = _mix(a, b, c)
        length -= 12
        offset += 12
    if length == 0:
        return c
    tail = data[offset:].ljust(12, b"\0")
    a = (a + _host_u32(tail[0:4])) & _U32
    b = (b + _host_u32(tail[4:8])) & _U32
    c = (c + _host_u32(tail[8:12])) & _U32
    _, _, c = _final(a, b, c)
    return c


def nft_registers(policy: HashPolicy, key: FrameKey) -> bytes:
    """The concatenation nft hashes: each field zero-padded to a 32-bit register."""
    out = b""
    for field in POLICY_FIELDS[policy]:
        raw = key.field_bytes(field)
        assert len(raw) == _FIELD_WIDTH[field]
        out += raw.ljust((len(raw) + 3) // 4 * 4, b"\0")
    return out


def nft_member_index(policy: HashPolicy, key: FrameKey, members: int, seed: int = DEFAULT_SEED) -> int:
    """Which of ``members`` the rendered nft rule forwards this frame to."""
    if members < 1:
        raise ValueError("a team needs at least one usable member to transmit")
    if policy is HashPolicy.LAYER2 or not key.is_ipv4():
        data = nft_registers(HashPolicy.LAYER2, key)
    elif policy is HashPolicy.LAYER3_4 and not key.has_ports():
        data = key.field_bytes("ip saddr") + key.field_bytes("ip daddr")
    else:
        data = nft_registers(policy, key)
    # nft_jhash_eval: reciprocal_scale(jhash(data, len, seed), modulus)
    return (jhash(data, seed) * members) >> 32
