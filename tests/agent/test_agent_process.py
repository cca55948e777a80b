"""The real agent process with the process driver and a SQLite store: kill -9, restart, adoption."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nonstop.agent.records import AgentKeys
from nonstop.core.guests.model import GuestDefinition
from nonstop.drivers.probe import http_get, wait_http_ok
from nonstop.drivers.process import ProcessDriver
from nonstop.drivers.process_net import netns_name
from nonstop.net import netns as nsutil
from nonstop.store import open_store
from nonstop.store.base import Store, encode_json
from nonstop.store.records import RunnerLock

pytestmark = pytest.mark.root
MiB = 2**20
PORT = 8080


class AgentProcess:
    def __init__(self, db: Path, cluster: str, state_dir: Path, log: Path) -> None:
        self.argv = [sys.executable, "-m", "nonstop.agent", "--host", "h1", "--store", f"sqlite:///{db}",
                     "--cluster", cluster, "--state-dir", str(state_dir), "--drivers", "process",
                     "--interval", "0.2", "--lease-ttl", "3"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[AgentProcess, str, Path]]:
    cluster = f"ga{secrets.token_hex(3)}"
    agent = AgentProcess(tmp_path / "state.db", cluster, tmp_path / "agent", tmp_path / "agent.log")
    yield agent, cluster, tmp_path
    agent.stop()
    # Whatever the test left, the process driver itself cleans it (guests outlive agents by design).
    driver = ProcessDriver(cluster=cluster, host="h1", state_dir=tmp_path / "agent" / "process")

    async def clean() -> None:
        for name in await driver.list_guests():
            await driver.destroy(name)

    cleaner = threading.Thread(target=lambda: asyncio.run(clean()))  # works whether or not a loop runs here
    cleaner.start()
    cleaner.join()
    assert nsutil.list_names(f"nonstop-{cluster}-") == [], (tmp_path / "agent.log").read_text()[-3000:]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    await s.close()


async def wait_for(store: Store, key: str, check: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rec: Any = None
    while time.monotonic() < deadline:
        rec = await store.get_json(key)
        if isinstance(rec, dict) and check(rec):
            return rec
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting on {key}: last {rec}")


def definition(cluster: str, name: str, **kw: Any) -> GuestDefinition:
    base: dict[str, Any] = {"vcpus": 1, "max_vcpus": 2, "memory": 64 * MiB, "max_memory": 256 * MiB, "port": PORT}
    return GuestDefinition(name=name, cluster=cluster, host="h1", **{**base, **kw})


async def test_agent_kill9_restart_adopts_without_restarting_guests(
    setup: tuple[AgentProcess, str, Path], store: Store
) -> None:
    agent, cluster, _ = setup
    keys = AgentKeys(cluster, "h1")
    await store.put(keys.desired("web-0"), encode_json(definition(cluster, "web-0").to_dict()))
    agent.start()
    rec = await wait_for(store, keys.observed("web-0"), lambda r: r["state"] == "running")
    ns = netns_name(cluster, "web-0")
    await asyncio.to_thread(wait_http_ok, ns, "127.0.0.1", PORT)
    boot, pid = rec["boot_id"], rec["pid"]

    agent.kill9()
    # The guest does not depend on its agent.
    status, body = await asyncio.to_thread(http_get, ns, "127.0.0.1", PORT, "/")
    assert status == 200 and json.loads(body)["boot_id"] == boot

    agent.start()
    alive = await wait_for(store, keys.alive(), lambda r: r["pid"] == agent.proc.pid)  # type: ignore[union-attr]
    assert alive["host"] == "h1"
    await asyncio.sleep(1.0)  # several reconcile passes of the new agent
    rec = await wait_for(store, keys.observed("web-0"), lambda r: r["state"] == "running")
    assert rec["boot_id"] == boot and rec["pid"] == pid
    status, body = await asyncio.to_thread(http_get, ns, "127.0.0.1", PORT, "/")
    assert json.loads(body)["boot_id"] == boot and json.loads(body)["pid"] == pid
    runner = await store.get(keys.runner("web-0"))
    assert runner is not None and RunnerLock.decode(runner.value) == RunnerLock(host="h1")

    # Hot-add through the store: the running guest gets the new limits, no restart.
    await store.put(keys.desired("web-0"), encode_json(definition(cluster, "web-0", vcpus=2, memory=128 * MiB).to_dict()))
    rec = await wait_for(store, keys.observed("web-0"), lambda r: r.get("vcpus") == 2 and r.get("memory") == 128 * MiB)
    assert rec["boot_id"] == boot and rec["pid"] == pid
    _, body = await asyncio.to_thread(http_get, ns, "127.0.0.1", PORT, "/")
    page = json.loads(body)
    assert page["vcpus"] == 2.0 and page["memory_limit"] == 128 * MiB and page["boot_id"] == boot

    # Removing the desired record stops and removes the guest.
    await store.delete(keys.desired("web-0"))
    deadline = time.monotonic() + 10
    while nsutil.exists(ns) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not nsutil.exists(ns)
    assert not nsutil.alive(pid)


async def test_guest_that_cannot_start_fails_while_others_keep_running(
    setup: tuple[AgentProcess, str, Path], store: Store
) -> None:
    agent, cluster, _ = setup
    keys = AgentKeys(cluster, "h1")
    await store.put(keys.desired("ok-0"), encode_json(definition(cluster, "ok-0").to_dict()))
    agent.start()
    ok = await wait_for(store, keys.observed("ok-0"), lambda r: r["state"] == "running")
    bad_inputs = {
        "nocmd-0": definition(cluster, "nocmd-0", command=("/no/such/binary",)).to_dict(),
        "nomem-0": {**definition(cluster, "nomem-0").to_dict(), "memory": 1 * MiB, "max_memory": 1 * MiB},
        "junk-0": None,
    }
    for name, data in bad_inputs.items():
        await store.put(keys.desired(name), b"{not json" if data is None else encode_json(data))
    nocmd = await wait_for(store, keys.observed("nocmd-0"), lambda r: r["state"] == "failed" and r.get("gave_up"))
    assert "/no/such/binary" in nocmd["failure_reason"]
    nomem = await wait_for(store, keys.observed("nomem-0"), lambda r: r["state"] == "failed")
    assert "below" in nomem["failure_reason"]
    junk = await wait_for(store, keys.observed("junk-0"), lambda r: r["state"] == "failed")
    assert "unreadable" in junk["failure_reason"]
    still = await wait_for(store, keys.observed("ok-0"), lambda r: r["state"] == "running")
    assert still["boot_id"] == ok["boot_id"]
    assert agent.proc is not None and agent.proc.poll() is None
    for name in ("ok-0", *bad_inputs):
        await store.delete(keys.desired(name))
    ns = netns_name(cluster, "ok-0")
    deadline = time.monotonic() + 10
    while nsutil.exists(ns) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not nsutil.exists(ns) and os.path.exists(agent.log)
