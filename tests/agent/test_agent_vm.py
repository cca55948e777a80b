"""Two real agents with the QEMU driver: a VM started from the store, hot-added, moved by setting
``migrate_to`` and ``migration_id`` — the agents' migration operation in the store, on real VMs
(TCG) — and shrunk again (memory unplug) when the spec asks for less. The test plays the
controller's part of the move (the desired record rewritten on the destination once done)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nonstop.agent.agent import Agent
from nonstop.core.guests import migration as mig
from nonstop.core.guests.model import DiskDefinition, GuestDefinition, VnicDefinition, default_mac
from nonstop.core.guests.reconcile import RetryPolicy
from nonstop.store import open_store
from nonstop.store.base import Store, encode_json
from nonstop.store.operations import new_op_id
from nonstop.store.records import RunnerLock, read

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
]
MiB = 2**20
GUEST_IP = "198.18.10.7"


@pytest.fixture
def lab() -> Iterator[Any]:
    from nonstop.drivers.qemu_testlab import TwoHostLab

    built = TwoHostLab().build()
    yield built
    built.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    await s.close()


async def wait_for(store: Store, key: str, check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rec: Any = None
    while time.monotonic() < deadline:
        rec = await store.get_json(key)
        if isinstance(rec, dict) and check(rec):
            return rec
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out on {key}: last {rec}")


async def test_vm_started_resized_and_migrated_by_agents(lab: Any, store: Store, tmp_path: Path) -> None:
    from nonstop.drivers.qemu import QemuDriver
    from nonstop.drivers.qemu_testlab import fetch_in, parse_page

    cluster = f"gv{lab.token}"
    disks = tmp_path / "disks"
    agents: list[Agent] = []
    for host, ns, ip in (("ha", lab.ns_a, lab.host_a_ip), ("hb", lab.ns_b, lab.host_b_ip)):
        driver = QemuDriver(cluster=cluster, host=host, state_dir=tmp_path / host, netns=ns, disk_dir=disks,
                            migration_address=ip)
        agents.append(Agent(store, cluster=cluster, host=host, drivers={"vm": driver}, interval=0.2,
                            policy=RetryPolicy(base_delay=0.5)))
    a, b = agents
    stop = asyncio.Event()
    tasks = [asyncio.create_task(agent.run(stop)) for agent in agents]
    d = GuestDefinition(name="vm-0", cluster=cluster, host="ha", kind="vm", vcpus=1, max_vcpus=2,
                        memory=256 * MiB, max_memory=512 * MiB,
                        disks=(DiskDefinition(name="data", size=32 * MiB, provisioning="thin"),),
                        vnics=(VnicDefinition(network="lan", mac=default_mac(cluster, "vm-0", 0),
                                              address=f"{GUEST_IP}/24", bridge=lab.bridge),))
    key_obs = a.keys.observed("vm-0")
    try:
        await store.put(a.keys.desired("vm-0"), encode_json(d.to_dict()))
        rec = await wait_for(store, key_obs, lambda r: r["state"] == "running" and r.get("boot_id"), 60)
        boot = rec["boot_id"]

        def page() -> dict[str, str]:
            deadline = time.monotonic() + 10  # after a move, switches relearn the MAC
            while True:
                try:
                    status, body = fetch_in(lab.ns_client, GUEST_IP, "/")
                    if status == 200:
                        return parse_page(body)
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)

        assert (await asyncio.to_thread(page))["boot_id"] == boot

        # Hot-add through the store: the agent applies it live, the guest sees it, no reboot.
        grown = d.with_changes(vcpus=2, memory=512 * MiB)
        await store.put(a.keys.desired("vm-0"), encode_json(grown.to_dict()))
        await wait_for(store, key_obs, lambda r: r.get("vcpus") == 2 and r.get("memory") == 512 * MiB, 30)
        assert (await store.get_json(key_obs))["boot_id"] == boot

        # Ask for a move: the agents hand the VM over through the migration operation ops/<id>.
        op_id = new_op_id("migration")
        asked = grown.with_changes(migrate_to="hb", migration_id=op_id)
        await store.put(a.keys.desired("vm-0"), encode_json(asked.to_dict()))
        op = await wait_for(store, a.keys.migration(op_id), lambda r: r.get("step") == "finished", 90)
        assert op["body"]["result"]["total_seconds"] > 0
        # Before the controller's rewrite the record still names ha: hb runs and reports the VM.
        assert (await store.get_json(a.keys.desired("vm-0")))["host"] == "ha"
        rec = await wait_for(store, key_obs,
                             lambda r: r["host"] == "hb" and r["state"] == "running" and r.get("boot_id"), 30)
        assert rec["boot_id"] == boot and rec["fencing_epoch"] == asked.fencing_epoch
        assert (await asyncio.to_thread(page))["boot_id"] == boot
        assert await read(store, a.keys.runner("vm-0"), RunnerLock) == RunnerLock(host="hb")
        # The controller's part: the record on hb, the request cleared, the same epoch.
        await store.put(a.keys.desired("vm-0"), encode_json(mig.handed_over(asked).to_dict()))
        await asyncio.sleep(1.0)
        rec = await store.get_json(key_obs)
        assert rec["host"] == "hb" and rec["state"] == "running" and rec["boot_id"] == boot
        deadline = time.monotonic() + 20
        while await a.drivers["vm"].list_guests() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await a.drivers["vm"].list_guests() == []  # the source copy is gone
        # ... and removing it took nothing the destination needs.
        assert (await asyncio.to_thread(page))["boot_id"] == boot
        assert (await b.drivers["vm"].status("vm-0")).state.value == "running"

        # Shrink the spec's memory: hb's agent unplugs the DIMM live (the guest offlines it);
        # the guest's own page and the observed record both show 256 MiB, same boot.
        await store.put(a.keys.desired("vm-0"), encode_json(grown.with_changes(host="hb", memory=256 * MiB).to_dict()))
        rec = await wait_for(store, key_obs, lambda r: r.get("memory") == 256 * MiB, 60)
        assert rec["boot_id"] == boot and rec["state"] == "running"
        deadline = time.monotonic() + 15
        while (shown := await asyncio.to_thread(page))["memory_online_mib"] != "256" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (shown["memory_online_mib"], shown["vcpus"], shown["boot_id"]) == ("256", "2", boot)
    finally:
        await store.delete(a.keys.desired("vm-0"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (await a.drivers["vm"].list_guests() or await b.drivers["vm"].list_guests()):
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait(tasks, timeout=20)
        for agent in agents:
            for name in await agent.drivers["vm"].list_guests():
                with contextlib.suppress(Exception):
                    await agent.drivers["vm"].destroy(name)
