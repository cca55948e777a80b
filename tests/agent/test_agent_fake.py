"""The agent's reconcile loop against the real SQLite store and the fake driver (fast, no root)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nonstop.agent.agent import Agent
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.guests.reconcile import RetryPolicy
from nonstop.drivers.fake import FakeDriver
from nonstop.store import open_store
from nonstop.store.base import Store, encode_json

MiB = 2**20
POLICY = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.2, stop_timeout=1.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    await s.close()


def make_agent(store: Store, tmp_path: Path, cluster: str, host: str) -> Agent:
    driver = FakeDriver(cluster=cluster, host=host, state_dir=tmp_path / host)
    return Agent(store, cluster=cluster, host=host, drivers={"process": driver}, policy=POLICY,
                 interval=0.05, lease_ttl=5, observed_every=0.0)


@pytest.fixture
async def agent(store: Store, tmp_path: Path) -> AsyncIterator[Agent]:
    a = make_agent(store, tmp_path, f"gf{secrets.token_hex(3)}", "h1")
    await a.start()
    yield a
    await a.shutdown()


def fake(agent: Agent) -> FakeDriver:
    driver = agent.drivers["process"]
    assert isinstance(driver, FakeDriver)
    return driver


def gdef(agent: Agent, name: str = "g0", host: str | None = None, **kw: object) -> GuestDefinition:
    base: dict[str, object] = {"vcpus": 1, "max_vcpus": 4, "memory": 64 * MiB, "max_memory": 256 * MiB}
    base.update(kw)
    return GuestDefinition(name=name, cluster=agent.keys.cluster, host=host or agent.host, **base)  # type: ignore[arg-type]


async def put_desired(store: Store, agent: Agent, d: GuestDefinition) -> None:
    await store.put(agent.keys.desired(d.name), encode_json(d.to_dict()))


async def settle(*agents: Agent, passes: int = 40) -> None:
    """Run passes until no agent has work in flight and a pass produced no runnable action."""
    for _ in range(passes):
        for a in agents:
            await a.reconcile_once()
        inflight = [t for a in agents for t in a.inflight.values()]
        if inflight:
            await asyncio.wait(inflight, timeout=5)
        else:
            await asyncio.sleep(0.02)
    for a in agents:
        await a.reconcile_once()


async def observed(store: Store, agent: Agent, name: str = "g0") -> dict[str, object]:
    rec = await store.get_json(agent.keys.observed(name))
    assert isinstance(rec, dict), f"no observed record for {name}"
    return rec


async def test_starts_what_is_desired_and_reports_it(store: Store, agent: Agent) -> None:
    await put_desired(store, agent, gdef(agent))
    await settle(agent, passes=3)
    rec = await observed(store, agent)
    assert rec["state"] == "running" and rec["host"] == "h1" and rec["boot_id"]
    runner = await store.get_json(agent.keys.runner("g0"))
    assert runner == {"host": "h1"}
    host_rec = await store.get_json(agent.keys.host_observed())
    assert host_rec["guests"] == ["g0"] and host_rec["usage"]["guests_vcpus_allocated"] == 1
    assert await store.get(agent.keys.alive()) is not None


async def test_hot_plugs_changed_size_without_restart(store: Store, agent: Agent) -> None:
    await put_desired(store, agent, gdef(agent))
    await settle(agent, passes=3)
    boot = (await observed(store, agent))["boot_id"]
    await put_desired(store, agent, gdef(agent, vcpus=3, memory=128 * MiB))
    await settle(agent, passes=3)
    rec = await observed(store, agent)
    assert rec["vcpus"] == 3 and rec["memory"] == 128 * MiB and rec["boot_id"] == boot
    assert ("set_vcpus", "g0") in fake(agent).calls and ("set_memory", "g0") in fake(agent).calls


async def test_stops_and_destroys_what_should_not_run(store: Store, agent: Agent) -> None:
    await put_desired(store, agent, gdef(agent))
    await settle(agent, passes=3)
    await put_desired(store, agent, gdef(agent, running=False))
    await settle(agent, passes=3)
    assert (await observed(store, agent))["state"] == "stopped"
    assert await store.get(agent.keys.runner("g0")) is None
    await store.delete(agent.keys.desired("g0"))
    await settle(agent, passes=3)
    assert await fake(agent).list_guests() == []
    assert await store.get(agent.keys.observed("g0")) is None


async def test_bad_guest_fails_with_reason_and_others_keep_running(store: Store, agent: Agent) -> None:
    await put_desired(store, agent, gdef(agent, "bad", image="missing-disk"))
    await put_desired(store, agent, gdef(agent, "good"))
    await settle(agent, passes=5)
    bad = await observed(store, agent, "bad")
    assert bad["state"] == "failed" and "not found" in str(bad["failure_reason"]) and bad["gave_up"] is True
    assert (await observed(store, agent, "good"))["state"] == "running"
    creates = [c for c in fake(agent).calls if c == ("create", "bad")]
    assert len(creates) == 1  # a permanent error is not retried


async def test_transient_failure_is_retried_with_backoff(store: Store, agent: Agent) -> None:
    await put_desired(store, agent, gdef(agent, command=("fail-once",)))
    await settle(agent, passes=1)
    first = await observed(store, agent)
    assert first["state"] == "failed" and first["attempts"] == 1
    await asyncio.sleep(POLICY.base_delay * 2)
    await settle(agent, passes=3)
    assert (await observed(store, agent))["state"] == "running"


async def test_gives_up_after_the_retry_budget(store: Store, agent: Agent) -> None:
    await put_desired(store, agent, gdef(agent, command=("fail",)))
    for _ in range(12):
        await settle(agent, passes=1)
        await asyncio.sleep(0.1)
    rec = await observed(store, agent)
    assert rec["state"] == "failed" and rec["gave_up"] is True and "gave up after 3" in str(rec["failure_reason"])
    assert fake(agent).calls.count(("start", "g0")) == POLICY.max_attempts


async def test_refuses_a_stale_fencing_epoch(store: Store, agent: Agent) -> None:
    await store.put(agent.keys.epoch("g0"), b"5")
    await put_desired(store, agent, gdef(agent, fencing_epoch=4))
    await settle(agent, passes=3)
    rec = await observed(store, agent)
    assert rec["state"] == "failed" and "stale" in str(rec["failure_reason"])
    assert await fake(agent).list_guests() == []
    await put_desired(store, agent, gdef(agent, fencing_epoch=5))
    await settle(agent, passes=3)
    assert (await observed(store, agent))["state"] == "running"


async def test_never_starts_a_guest_another_host_holds(store: Store, agent: Agent) -> None:
    await store.put(agent.keys.runner("g0"), encode_json({"host": "h9"}))
    await put_desired(store, agent, gdef(agent))
    await settle(agent, passes=3)
    assert await fake(agent).list_guests() == []
    assert "h9" in str((await observed(store, agent))["note"])


async def test_crashed_guest_is_respawned(store: Store, agent: Agent) -> None:
    await put_desired(store, agent, gdef(agent))
    await settle(agent, passes=3)
    boot = (await observed(store, agent))["boot_id"]
    fake(agent).crash("g0", "kernel panic")
    await settle(agent, passes=3)
    rec = await observed(store, agent)
    assert rec["state"] == "running" and rec["boot_id"] != boot


async def test_restarted_agent_adopts_instead_of_restarting(store: Store, tmp_path: Path) -> None:
    cluster = f"gf{secrets.token_hex(3)}"
    first = make_agent(store, tmp_path, cluster, "h1")
    await first.start()
    await put_desired(store, first, gdef(first))
    await settle(first, passes=3)
    boot = (await observed(store, first))["boot_id"]
    await first.shutdown()
    second = make_agent(store, tmp_path, cluster, "h1")
    await second.start()
    await settle(second, passes=3)
    assert (await observed(store, second))["boot_id"] == boot
    assert ("start", "g0") not in fake(second).calls and ("create", "g0") not in fake(second).calls
    runner = await store.get(second.keys.runner("g0"))
    assert runner is not None and runner.lease == second.lease  # re-bound to the new lease
    await second.shutdown()


async def test_live_migration_between_two_agents(store: Store, tmp_path: Path) -> None:
    cluster = f"gf{secrets.token_hex(3)}"
    a, b = make_agent(store, tmp_path, cluster, "h1"), make_agent(store, tmp_path, cluster, "h2")
    await a.start()
    await b.start()
    try:
        await put_desired(store, a, gdef(a))
        await settle(a, b, passes=3)
        boot = (await observed(store, a))["boot_id"]
        await put_desired(store, a, gdef(a, migrate_to="h2"))
        await settle(a, b, passes=8)
        desired = await store.get_json(a.keys.desired("g0"))
        assert desired["host"] == "h2" and desired["migrate_to"] is None
        rec = await observed(store, b)
        assert rec["host"] == "h2" and rec["state"] == "running" and rec["boot_id"] == boot
        assert await fake(a).list_guests() == [] and await fake(b).list_guests() == ["g0"]
        assert (await store.get_json(b.keys.runner("g0"))) == {"host": "h2"}
        op = await store.get_json(a.keys.migration("g0"))
        assert op["phase"] == "finished" and op["result"]["destination"] == "h2"
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_an_empty_store_does_not_wipe_adopted_guests(store: Store, tmp_path: Path) -> None:
    cluster = f"gf{secrets.token_hex(3)}"
    first = make_agent(store, tmp_path, cluster, "h1")
    await first.start()
    await put_desired(store, first, gdef(first))
    await settle(first, passes=3)
    await first.shutdown()
    empty = open_store(f"sqlite:///{tmp_path}/other.db")  # the wrong store: nothing desired at all
    try:
        second = make_agent(empty, tmp_path, cluster, "h1")
        await second.start()
        await settle(second, passes=3)
        assert await fake(second).list_guests() == ["g0"]
        assert ("destroy", "g0") not in fake(second).calls
        await second.shutdown()
    finally:
        await empty.close()
