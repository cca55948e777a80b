"""An agent restarted on a VM's former host destroys its stale copy, never the shared files.

The lab's hosts share the disk directory. After a VM moved h1 → h3 (or was restarted on h3), h1's
agent, on restart, adopts the copy it finds in its state directory and destroys it ("no longer
assigned to this host"); the layout and disks must stay for h3 (docs/patching.md: the failback to
h1 failed with "no machine layout"). Real SQLite store and real QEMU driver; no VM boots
(qemu-img only), since the destroy path is the same for a stopped and a migrated-away copy.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nonstop.agent.agent import Agent
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.guests.reconcile import RetryPolicy
from nonstop.drivers.base import DiskDefinition
from nonstop.drivers.qemu import QemuDriver
from nonstop.store import open_store
from nonstop.store.base import Store, encode_json

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")

MiB = 2**20
POLICY = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.2, stop_timeout=1.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    await s.close()


async def test_restarted_agent_on_former_host_keeps_layout_for_the_current_host(store: Store, tmp_path: Path) -> None:
    cluster = f"gq{secrets.token_hex(3)}"
    disks = tmp_path / "disks"
    h1 = QemuDriver(cluster=cluster, host="h1", state_dir=tmp_path / "h1", disk_dir=disks)
    h3 = QemuDriver(cluster=cluster, host="h3", state_dir=tmp_path / "h3", disk_dir=disks)
    definition = GuestDefinition(name="web-0", cluster=cluster, host="h1", kind="vm",
                                 disks=(DiskDefinition(name="data", size=16 * MiB, provisioning="thin"),))
    await h1.create(definition)
    moved = definition.with_changes(host="h3")
    await h3.create(moved)  # the guest lives on h3 now, on the same shared disk directory
    agent = Agent(store, cluster=cluster, host="h1", drivers={"vm": h1}, policy=POLICY, interval=0.05,
                  lease_ttl=5, observed_every=0.0)
    await store.put(agent.keys.desired("web-0"), encode_json(moved.to_dict()))
    await agent.start()  # the restarted agent adopts what it finds on disk
    try:
        for _ in range(100):
            await agent.reconcile_once()
            if agent.inflight:
                await asyncio.wait(list(agent.inflight.values()), timeout=10)
            if await h1.list_guests() == []:
                break
            await asyncio.sleep(0.02)
    finally:
        await agent.shutdown()
    assert await h1.list_guests() == [], "h1 destroyed its stale copy"
    shared = disks / cluster / "web-0"
    assert json.loads((shared / "layout.json").read_text())["owner"] == "h3"
    assert (shared / "data.qcow2").exists()
    assert (await h3.definition("web-0")).host == "h3"
    await h3.destroy("web-0")
    assert not shared.exists()
