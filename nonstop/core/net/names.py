"""Deterministic names and MAC addresses of everything host networking creates.

Role: one place that says how a network's bridge, an uplink bridge, a bridged network's
patch cable, a guest vNIC and an nftables table are named, so the renderer, the shell and
the tests agree, and so a crashed agent finds its own objects again by name. Interface
names fit the kernel's 15-byte limit: a name that would not fit is cut and given a short
hash suffix, which keeps it unique and stable.

Must not: touch the system, or depend on anything but its arguments (no counters, no
randomness): the same inputs must give the same names on every host and every run.
"""

from __future__ import annotations

import hashlib

IFNAMSIZ = 15
"""Longest Linux interface name (IFNAMSIZ minus the terminating NUL)."""

BRIDGE_PREFIX = "nb-"
"""A network's virtual switch on a host."""
UPLINK_BRIDGE_PREFIX = "nu-"
"""The bridge an uplink joins when bridged networks share it; host addresses live on it."""
PATCH_NET_PREFIX = "pa-"
"""Patch cable end plugged into a bridged network's bridge."""
PATCH_UPLINK_PREFIX = "pb-"
"""Patch cable end plugged into the uplink bridge."""
TAP_PREFIX = "nt"
VETH_HOST_PREFIX = "nv"
VETH_GUEST_PREFIX = "ng"

OWNED_LINK_PREFIXES = (BRIDGE_PREFIX, UPLINK_BRIDGE_PREFIX, PATCH_NET_PREFIX, PATCH_UPLINK_PREFIX)
"""Links ``ensure_host_network`` owns and prunes when no longer desired (vNICs are not among them)."""
VNIC_LINK_PREFIXES = (TAP_PREFIX, VETH_HOST_PREFIX)

NAT_TABLE_PREFIX = "nonstop_nat_"
BANDWIDTH_TABLE_PREFIX = "nonstop_bw_"


def digest(text: str, length: int = 8) -> str:
    """Stable short hex digest of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def fit(prefix: str, name: str) -> str:
    """``prefix + name`` when it fits in IFNAMSIZ, else a cut name with a 4-hex hash suffix."""
    full = prefix + name
    if len(full) <= IFNAMSIZ:
        return full
    keep = IFNAMSIZ - len(prefix) - 4
    return prefix + name[:keep] + digest(name, 4)


def bridge_name(network: str) -> str:
    return fit(BRIDGE_PREFIX, network)


def uplink_bridge_name(uplink: str) -> str:
    return fit(UPLINK_BRIDGE_PREFIX, uplink)


def patch_names(network: str) -> tuple[str, str]:
    """(end on the network bridge, end on the uplink bridge) of a bridged network's patch cable."""
    return fit(PATCH_NET_PREFIX, network), fit(PATCH_UPLINK_PREFIX, network)


def vnic_key(cluster: str, guest: str, index: int) -> str:
    return f"{cluster}/{guest}/{index}"


def vnic_names(cluster: str, guest: str, index: int, kind: str) -> tuple[str, str | None]:
    """(host-side device, guest-side veth end or None for a tap)."""
    tag = digest(vnic_key(cluster, guest, index), 9)
    if kind == "tap":
        return TAP_PREFIX + tag, None
    if kind == "veth":
        return VETH_HOST_PREFIX + tag, VETH_GUEST_PREFIX + tag
    raise ValueError(f'expected vNIC kind "tap" or "veth", got "{kind}"')


def vnic_mac(cluster: str, guest: str, index: int) -> str:
    """Locally administered unicast MAC from a hash of cluster/guest/index: stable across moves."""
    raw = bytearray(hashlib.sha256(vnic_key(cluster, guest, index).encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02  # clear multicast bit, set locally-administered bit
    return ":".join(f"{b:02x}" for b in raw)


def nat_table_name(network: str) -> str:
    return NAT_TABLE_PREFIX + network.replace("-", "_")


def bandwidth_table_name(device: str) -> str:
    return BANDWIDTH_TABLE_PREFIX + device
