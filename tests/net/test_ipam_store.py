"""IPAM in the real store (SQLite backend): unique under races, survives a restart,
released on guest deletion."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nonstop.core.spec import NetworkSpec
from nonstop.net import ipam_store
from nonstop.store import open_store

NET = NetworkSpec(name="prod", subnet="198.18.10.0/27", gateway="198.18.10.1")


async def test_racing_allocations_never_share_an_address(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    a, b = open_store(url), open_store(url)  # two agents on one store
    try:
        guests = [f"g-{i}" for i in range(20)]
        results = await asyncio.gather(*(ipam_store.allocate_address(a if i % 2 else b, "c1", NET, g) for i, g in enumerate(guests)))
        assert len(set(results)) == 20
        assert "198.18.10.1" not in results and "198.18.10.0" not in results
        # asking again gives the same answers
        again = [await ipam_store.allocate_address(a, "c1", NET, g) for g in guests]
        assert again == results
    finally:
        await a.close()
        await b.close()


async def test_addresses_survive_restart_and_are_released(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    store = open_store(url)
    first = await ipam_store.allocate_address(store, "c1", NET, "web-0")
    second = await ipam_store.allocate_address(store, "c1", NET, "web-1")
    await store.close()
    store = open_store(url)  # a restart
    try:
        assert await ipam_store.address_of(store, "c1", "prod", "web-0") == first
        assert await ipam_store.allocate_address(store, "c1", NET, "web-1") == second
        assert await ipam_store.guest_addresses(store, "c1", ["prod"]) == {"prod": {"web-0": first, "web-1": second}}
        assert await ipam_store.release_address(store, "c1", "prod", "web-0") == [first]
        assert await ipam_store.address_of(store, "c1", "prod", "web-0") is None
        assert await ipam_store.release_address(store, "c1", "prod", "web-0") == []
        # the freed address goes to the next guest; other clusters are separate
        assert await ipam_store.allocate_address(store, "c1", NET, "web-2") == first
        assert await ipam_store.allocate_address(store, "c2", NET, "web-9") == first
    finally:
        await store.close()
