"""The agent's reconcile loop against the real SQLite store and the fake driver (fast, no root)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nonstop.agent import records
from nonstop.agent.agent import Agent
from nonstop.core.guests import migration as mig
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.guests.reconcile import RetryPolicy
from nonstop.drivers.base import MigrationEndpoint, MigrationError, MigrationResult
from nonstop.drivers.fake import FakeDriver
from nonstop.store import open_store
from nonstop.store.base import Store, encode_json
from nonstop.store.operations import new_op_id
from nonstop.store.records import RunnerLock, read

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
    assert await read(store, agent.keys.runner("g0"), RunnerLock) == RunnerLock(host="h1")
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


# ------------------------------------------------------------------ live migration


async def request_move(store: Store, agent: Agent, to: str, **kw: object) -> str:
    """What the controller writes to ask for a live migration: ``migrate_to`` and a fresh id."""
    op_id = new_op_id("migration")
    await put_desired(store, agent, gdef(agent, migrate_to=to, migration_id=op_id, **kw))
    return op_id


async def controller_step(store: Store, agent: Agent, name: str = "g0") -> str | None:
    """The controller's side until it lands: done/finished → the record on the destination,
    failed → the request cleared. Returns the step it acted on."""
    d = GuestDefinition.from_dict(await store.get_json(agent.keys.desired(name)))
    if d.migration_id is None:
        return None
    m = await records.load_migration(store, agent.keys.cluster, d.migration_id)
    if m is None or m.step not in (*mig.HANDED_OVER, mig.FAILED):
        return None
    after = mig.handed_over(d) if m.step in mig.HANDED_OVER else d.with_changes(migrate_to=None, migration_id=None)
    await put_desired(store, agent, after)
    return m.step


async def step(*agents: Agent) -> None:
    """One pass of each agent, then wait for the work it started."""
    for a in agents:
        await a.reconcile_once()
        if a.inflight:
            await asyncio.wait(list(a.inflight.values()), timeout=5)


async def until_done(a: Agent, b: Agent, op_id: str) -> None:
    """Run the source's migration and the destination only until ``done``: h2 has not finished."""
    await a.reconcile_once()  # h1 asks and waits for h2 to prepare
    for _ in range(40):
        await step(b)
        m = await records.load_migration(a.store, a.keys.cluster, op_id)
        if m is not None and m.step != "requested":
            break
    if a.inflight:
        await asyncio.wait(list(a.inflight.values()), timeout=5)
    m = await records.load_migration(a.store, a.keys.cluster, op_id)
    assert m is not None and m.step == "done"


@pytest.fixture
async def pair(store: Store, tmp_path: Path) -> AsyncIterator[tuple[Agent, Agent]]:
    cluster = f"gf{secrets.token_hex(3)}"
    a, b = make_agent(store, tmp_path, cluster, "h1"), make_agent(store, tmp_path, cluster, "h2")
    await a.start()
    await b.start()
    await put_desired(store, a, gdef(a))
    await settle(a, b, passes=3)
    yield a, b
    await a.shutdown()
    await b.shutdown()


async def test_live_migration_between_two_agents(store: Store, pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    boot = (await observed(store, a))["boot_id"]
    op_id = await request_move(store, a, "h2")
    await settle(a, b, passes=8)
    # The agents never write the desired record: until the controller does, it still names h1.
    desired = await store.get_json(a.keys.desired("g0"))
    assert desired["host"] == "h1" and desired["migrate_to"] == "h2" and desired["migration_id"] == op_id
    m = await records.load_migration(store, a.keys.cluster, op_id)
    assert m is not None and m.step == "finished" and m.record.kind == "migration"
    assert set(m.record.progress) == {"requested", "ready", "done", "finished"}
    assert m.body.result is not None and m.body.result["destination"] == "h2" and m.body.definition.host == "h2"
    # The window before the controller's rewrite: h2 runs and reports it, h1 neither restarts nor reports it.
    rec = await observed(store, b)
    assert rec["host"] == "h2" and rec["state"] == "running" and rec["boot_id"] == boot and rec["fencing_epoch"] == 0
    assert await fake(a).list_guests() == [] and await fake(b).list_guests() == ["g0"]
    assert await read(store, b.keys.runner("g0"), RunnerLock) == RunnerLock(host="h2")
    assert fake(a).calls.count(("create", "g0")) == 1 and fake(a).calls.count(("start", "g0")) == 1
    assert await controller_step(store, a) == "finished"
    await settle(a, b, passes=3)
    rec = await observed(store, b)
    assert rec["host"] == "h2" and rec["state"] == "running" and rec["boot_id"] == boot
    assert ("create", "g0") not in fake(b).calls and ("start", "g0") not in fake(b).calls
    runner = await store.get(b.keys.runner("g0"))
    assert runner is not None and runner.lease == b.lease


async def test_the_done_window_before_the_destination_finishes(store: Store, pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    op_id = await request_move(store, a, "h2")
    await until_done(a, b, op_id)
    before = await observed(store, a)
    for _ in range(3):
        await step(a)  # h1 removes its old copy and reports nothing: no restart, no "stopped"
    assert await fake(a).list_guests() == []
    assert fake(a).calls.count(("start", "g0")) == 1
    assert (await observed(store, a))["updated_at"] == before["updated_at"]
    await step(b)
    m = await records.load_migration(store, a.keys.cluster, op_id)
    assert m is not None and m.step == "finished" and ("finish_incoming", "g0") in fake(b).calls
    assert (await observed(store, b))["host"] == "h2"


async def test_destination_restarted_after_the_controller_rewrote_still_finishes(
        store: Store, tmp_path: Path, pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    op_id = await request_move(store, a, "h2")
    await until_done(a, b, op_id)
    assert await controller_step(store, a) == "done"  # the controller may rewrite at done already
    await b.shutdown()
    again = make_agent(store, tmp_path, a.keys.cluster, "h2")
    await again.start()
    try:
        await settle(a, again, passes=3)
        m = await records.load_migration(store, a.keys.cluster, op_id)
        assert m is not None and m.step == "finished" and ("finish_incoming", "g0") in fake(again).calls
        assert (await observed(store, again))["host"] == "h2"
        runner = await store.get(again.keys.runner("g0"))
        assert runner is not None and runner.lease == again.lease
    finally:
        await again.shutdown()


class FailingMigrations(FakeDriver):
    async def migrate(self, name: str, endpoint: MigrationEndpoint, *, timeout: float = 120.0) -> MigrationResult:
        self.calls.append(("migrate", name))
        raise MigrationError("link down (injected)", guest=name)


async def test_a_failed_migration_keeps_the_guest_on_the_source(store: Store, tmp_path: Path) -> None:
    cluster = f"gf{secrets.token_hex(3)}"
    driver = FailingMigrations(cluster=cluster, host="h1", state_dir=tmp_path / "h1")
    a = Agent(store, cluster=cluster, host="h1", drivers={"process": driver}, policy=POLICY, interval=0.05,
              lease_ttl=5, observed_every=0.0)
    b = make_agent(store, tmp_path, cluster, "h2")
    await a.start()
    await b.start()
    try:
        await put_desired(store, a, gdef(a))
        await settle(a, b, passes=3)
        boot = (await observed(store, a))["boot_id"]
        op_id = await request_move(store, a, "h2")
        await settle(a, b, passes=6)
        m = await records.load_migration(store, cluster, op_id)
        assert m is not None and m.step == "failed" and "injected" in m.reason
        assert driver.calls.count(("migrate", "g0")) == 1  # a failed operation is never retried
        assert await fake(b).list_guests() == []  # the incoming copy is dropped
        rec = await observed(store, a)
        assert rec["host"] == "h1" and rec["state"] == "running" and rec["boot_id"] == boot
        assert "failed" in str(rec["note"])
        assert await controller_step(store, a) == "failed"
        await settle(a, b, passes=3)
        assert (await observed(store, a))["boot_id"] == boot
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_a_destination_that_cannot_receive_fails_the_migration(store: Store, tmp_path: Path) -> None:
    cluster = f"gf{secrets.token_hex(3)}"
    a = make_agent(store, tmp_path, cluster, "h1")
    b = Agent(store, cluster=cluster, host="h2", drivers={}, policy=POLICY, interval=0.05, lease_ttl=5)
    await a.start()
    await b.start()
    try:
        await put_desired(store, a, gdef(a))
        await settle(a, passes=3)
        op_id = await request_move(store, a, "h2")
        await settle(a, b, passes=6)
        m = await records.load_migration(store, cluster, op_id)
        assert m is not None and m.step == "failed" and "cannot receive" in m.reason
        assert (await observed(store, a))["state"] == "running" and await fake(a).list_guests() == ["g0"]
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_a_request_without_migration_id_is_refused(store: Store, pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    await put_desired(store, a, gdef(a, migrate_to="h2"))  # an old record: no migration_id
    await settle(a, b, passes=3)
    assert await records.list_migrations(store, a.keys.cluster) == []
    assert await fake(a).list_guests() == ["g0"] and await fake(b).list_guests() == []
    rec = await observed(store, a)
    assert rec["state"] == "running" and "no migration_id" in str(rec["note"])
    await put_desired(store, a, gdef(a))  # the request withdrawn: the note goes with it
    await settle(a, b, passes=2)
    assert (await observed(store, a))["note"] is None


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
