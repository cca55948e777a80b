"""IPAM kept in the store: claim, look up and release guest addresses per network.

Role: persist address assignments under ``/nonstop/<cluster>/ipam/<network>/<ip>`` (an
``IpamRecord``: the owner, i.e. the guest name) so they survive restarts and are shared by every agent
and the controller. The pure allocator (nonstop.core.net.ipam) picks the address; the
claim is a store transaction that succeeds only if the key is still absent, so two
callers racing for the same address cannot both get it: the loser re-reads and picks
again.

Must not: choose addresses itself or hold any state outside the store.
"""

from __future__ import annotations

from typing import Any

from nonstop.core.net import ipam
from nonstop.core.spec import NetworkSpec

MAX_CLAIM_ATTEMPTS = 64


def key_prefix(cluster: str, network: str) -> str:
    from nonstop.store import keys

    return keys.ipam_prefix(cluster, network)


async def taken(store: Any, cluster: str, network: str) -> dict[str, str]:
    """address -> owner for every address assigned on ``network``."""
    from nonstop.store.records import IpamRecord, read_prefix

    found = await read_prefix(store, key_prefix(cluster, network), IpamRecord)
    return {ip: record.owner for ip, record in found.items()}


async def allocate_address(store: Any, cluster: str, network: NetworkSpec, guest: str) -> str:
    """The address of ``guest`` on ``network``: the one it holds, else a newly claimed one.
    Raises ipam.AddressPoolExhaustedError when the subnet is full."""
    from nonstop.store.base import Compare
    from nonstop.store.records import IpamRecord, put_op

    for _ in range(MAX_CLAIM_ATTEMPTS):
        current = await taken(store, cluster, network.name)
        address = ipam.choose(network.subnet, network.gateway, current, guest)
        if current.get(address) == guest:
            return address
        key = key_prefix(cluster, network.name) + address
        result = await store.txn([Compare.missing(key)], [put_op(key, IpamRecord(owner=guest))])
        if result.succeeded:
            return address
    raise RuntimeError(f"could not claim an address on {network.name} after {MAX_CLAIM_ATTEMPTS} attempts")


async def address_of(store: Any, cluster: str, network: str, guest: str) -> str | None:
    return ipam.held_by(await taken(store, cluster, network), guest)


async def release_address(store: Any, cluster: str, network: str, guest: str) -> list[str]:
    """Release every address ``guest`` holds on ``network``; returns them. Only keys still
    owned by ``guest`` are deleted (a transaction compares the revision it was read at)."""
    from nonstop.store.base import Compare, Op
    from nonstop.store.records import IpamRecord, RecordError

    released = []
    prefix = key_prefix(cluster, network)
    for kv in await store.list(prefix):
        try:
            owner = IpamRecord.decode(kv.value).owner
        except RecordError:
            continue
        if owner == guest:
            result = await store.txn([Compare.mod_revision(kv.key, kv.mod_revision)], [Op.delete(kv.key)])
            if result.succeeded:
                released.append(kv.key[len(prefix):])
    return released


async def guest_addresses(store: Any, cluster: str, networks: list[str]) -> dict[str, dict[str, str]]:
    """network -> guest -> address (the lowest it holds), for ``ensure_host_network``'s port forwards."""
    out: dict[str, dict[str, str]] = {}
    for network in networks:
        current = await taken(store, cluster, network)
        out[network] = {owner: ipam.held_by(current, owner) or "" for owner in set(current.values())}
    return out
