"""etcd backend specifics: a server that goes away, and one that comes back with its data."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from nonstop.store import StoreUnavailable, open_store

from .etcd_process import ETCD, EtcdProcess, running_etcd

pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (apt-get install etcd-server)")


@pytest.fixture
def own_etcd() -> Iterator[EtcdProcess]:
    with running_etcd() as server:
        yield server


async def test_outage_is_reported_and_data_survives_a_restart(own_etcd: EtcdProcess) -> None:
    store = open_store(own_etcd.url)
    try:
        revision = await store.put("/nonstop/t/a", b"1")
        async with store.watch("/nonstop/t/") as watch:
            await asyncio.to_thread(own_etcd.stop)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(watch.__anext__(), 15)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.put("/nonstop/t/b", b"2"), 15)
    finally:
        await store.close()
    await asyncio.to_thread(own_etcd.start)
    again = open_store(own_etcd.url)
    try:
        kv = await again.get("/nonstop/t/a")
        assert kv is not None and kv.value == b"1" and kv.mod_revision == revision
        assert await again.get("/nonstop/t/b") is None
    finally:
        await again.close()


async def test_unreachable_server_fails_fast() -> None:
    store = open_store("etcd://127.0.0.1:1")
    try:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.get("/x"), 15)
    finally:
        await store.close()
