"""The kernel data plane: nftables DNAT maps in the balancer's own table (root only).

Loading a nat table turns on connection tracking for all traffic, so the table lives only
for the test and is deleted in teardown whatever happens."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections import Counter

import pytest

from nonstop.core.lb.health import AdminState

from .helpers import Client, free_port, running, service

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) is not installed"),
]


def table_exists(name: str) -> bool:
    return subprocess.run(["nft", "list", "table", "ip", name], capture_output=True).returncode == 0


@pytest.fixture
def table():
    name = f"nonstop_lbt_{secrets.token_hex(3)}"
    yield name
    if table_exists(name):
        subprocess.run(["nft", "delete", "table", "ip", name], check=False)


async def fresh_get(host: str, port: int) -> bytes:
    client = Client(port, host=host)
    try:
        return (await client.request("GET", "/vip", headers="Connection: close\r\n")).body[:1]
    finally:
        client.close()


async def test_nft_plane_balances_fails_over_and_cleans_up(backends, table):
    a, b = backends("a", "b")
    vip, port = f"127.0.{secrets.randbelow(200) + 20}.{secrets.randbelow(200) + 20}", free_port()
    spec = service("kern", [a, b], mode="nft", listen=f"{vip}:{port}")
    async with running(spec, nft_table=table) as lb:
        assert table_exists(table)
        listing = subprocess.run(["nft", "list", "table", "ip", table], capture_output=True, text=True).stdout
        assert "numgen inc mod 2" in listing and f"{vip}" in listing
        got = Counter([await fresh_get(vip, port) for _ in range(10)])
        assert got == {b"a": 5, b"b": 5}
        b.kill()
        for _ in range(60):  # health checks every 200 ms, fall 2
            if not lb.services["kern"].pool.get("b").health.serving:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # coalesced table rewrite
        assert [await fresh_get(vip, port) for _ in range(6)] == [b"a"] * 6
        lb.set_state("kern", "a", AdminState.MAINT)
        await asyncio.sleep(0.05)
        listing = subprocess.run(["nft", "list", "table", "ip", table], capture_output=True, text=True).stdout
        assert "no backend" in listing and "dnat" not in listing
        assert lb.nft is not None and lb.nft.applies >= 3
    assert not table_exists(table)


def test_weights_become_map_duplicates():
    from nonstop.core.lb.nft_render import NftBackend, NftService, render_table

    text = render_table(
        "nonstop_lb_x",
        [NftService("w", "127.0.0.100", 80, "source-hash", (NftBackend("127.0.0.1", 81, 4), NftBackend("127.0.0.1", 82, 2)))],
    )
    assert "jhash ip saddr mod 3 map { 0 : 127.0.0.1 . 81, 1 : 127.0.0.1 . 82, 2 : 127.0.0.1 . 81 }" in text
    assert text.startswith("add table ip nonstop_lb_x\ndelete table ip nonstop_lb_x\n")
    with pytest.raises(ValueError):
        render_table("filter", [])
