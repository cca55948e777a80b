"""The patcher and the rolling guest update ask the controller (issue 13): on a seeded SQLite store
with a fake controller — the one writer of ``guests/*/desired`` and ``hosts/*/desired`` here —
the executor's maintenance, evacuation and failback steps and the update's replacement write
intents only, wait for their outcome, and fail with the controller's words when it refuses or the
move fails; the agent's patch request lives under its host. No lab, no agents, no balancers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nonstop.agent.patch import request_key
from nonstop.core.patching.steps import Step, StepResult, Tick, new_rollout, transition
from nonstop.core.spec import FailbackMode
from nonstop.patching.executor import Patcher
from nonstop.patching.guest_update import GuestUpdater
from nonstop.store import intents, keys, open_store
from nonstop.store.base import Op, Store
from nonstop.store.intents import IntentOutcome, IntentRequest
from nonstop.store.state import get_spec, put_spec

from .seeded import CLUSTER, intent_requests, rollouts, seed

pytestmark = pytest.mark.timeout(60)
HOSTS = ("h1", "h2", "h3")


class Recording:
    """The patcher's store, remembering every key it writes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.written: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        self.written.append(key)
        return await self._store.put(key, value, lease)

    async def put_json(self, key: str, obj: Any, lease: int | None = None) -> int:
        self.written.append(key)
        return await self._store.put_json(key, obj, lease)

    async def txn(self, compares: Sequence[Any], success: Sequence[Op], failure: Sequence[Op] = ()) -> Any:
        self.written.extend(op.key for op in (*success, *failure))
        return await self._store.txn(compares, success, failure)

    def placement_writes(self) -> list[str]:
        return [k for k in self.written
                if keys.parse(k).kind in ("guests", "hosts") and keys.parse(k).leaf == "desired"]


class FakeController:
    """Answers intents as the controller would: maintenance at once; a move accepted with the
    first host that is neither the guest's nor ``avoid`` (or the explicit target), the guest then
    running there and the intent done. ``refuse`` / ``fail``: guest → the controller's words."""

    def __init__(self, store: Store, refuse: dict[str, str] | None = None, fail: dict[str, str] | None = None) -> None:
        self.store = store
        self.refuse, self.fail = refuse or {}, fail or {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for kv in await self.store.list(keys.intents_prefix(CLUSTER)):
                req = intents.parse_request(kv.value) if kv.key.endswith("/request") else None
                if req is not None and await intents.get_outcome(self.store, CLUSTER, req.id) is None:
                    await self.answer(req)
            await asyncio.sleep(0.02)

    async def outcome(self, req: IntentRequest, status: str, message: str, **extra: Any) -> None:
        out = IntentOutcome(id=req.id, status=status, message=message, updated_at=time.time(), **extra)
        await self.store.put_json(intents.outcome_key(CLUSTER, req.id), intents.dump(out))

    async def answer(self, req: IntentRequest) -> None:
        if req.kind == "maintenance":
            assert req.host is not None
            await self.store.put_json(keys.host_desired(CLUSTER, req.host), {
                "state": "maintenance" if req.enter else "up", "evacuate": req.evacuate, "reason": req.reason,
                "by": req.requester})
            status = await self.store.get_json(keys.leader(CLUSTER))
            inside = set(status["maintenance"]) - {req.host} | ({req.host} if req.enter else set())
            await self.store.put_json(keys.leader(CLUSTER), {**status, "maintenance": sorted(inside),
                                                             "updated_at": time.time()})
            await self.outcome(req, "done", f"{req.host} set")
            return
        assert req.guest is not None
        if req.guest in self.refuse:
            await self.outcome(req, "refused", self.refuse[req.guest])
            return
        desired = await self.store.get_json(keys.guest_desired(CLUSTER, req.guest))
        source = desired["host"]
        target = req.target or next(h for h in HOSTS if h not in (source, req.avoid))
        await self.outcome(req, "accepted", f"moving {req.guest}", target=target, source=source)
        if req.guest in self.fail:
            await asyncio.sleep(0.3)  # the patcher saw "accepted" and waits for the guest on the target
            await self.outcome(req, "failed", self.fail[req.guest], target=target, source=source)
            return
        await self.store.put_json(keys.guest_desired(CLUSTER, req.guest), {**desired, **req.changes, "host": target})
        await self.store.put_json(keys.guest_observed(CLUSTER, req.guest), {"host": target, "state": "running"})
        await self.outcome(req, "done", f"{req.guest} runs on {target}", target=target, source=source)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[str, Store]]:
    url = await asyncio.to_thread(seed, tmp_path / "s.db", "soft")
    store = open_store(url)
    for i, host in enumerate(HOSTS):
        await store.put_json(keys.guest_observed(CLUSTER, f"db-{i}"), {"host": host, "state": "running"})
    try:
        yield url, store
    finally:
        await store.close()


async def _patcher(store: Store, controller: FakeController, host: str, step: Step,
                   ) -> tuple[Patcher, Recording, asyncio.Event, asyncio.Task[None]]:
    """A patcher whose rollout has ``host`` at ``step``, and the fake controller running."""
    rollout, _ = transition(new_rollout("patch-rollout-0123456789ab", "L2", ((host,),), 0.0), Tick(), 0.0)
    while rollout.hosts[host].step is not step:
        rollout, _ = transition(rollout, StepResult(host, rollout.hosts[host].step, ok=True), 1.0)
    recording = Recording(store)
    patcher = Patcher(recording, CLUSTER, step_timeout=10.0)
    await patcher._save(rollout)
    patcher.rollout = rollout
    stop = asyncio.Event()
    return patcher, recording, stop, asyncio.create_task(controller.run(stop))


async def _step(patcher: Patcher, host: str, step: Step, stop: asyncio.Event, task: asyncio.Task[None]) -> StepResult:
    try:
        return await asyncio.wait_for(patcher._step(host, step), 20)
    finally:
        stop.set()
        await task


async def _evacuate_h1(store: Store, controller: FakeController) -> tuple[StepResult, Recording]:
    patcher, recording, stop, task = await _patcher(store, controller, "h1", Step.EVACUATE)
    return await _step(patcher, "h1", Step.EVACUATE, stop, task), recording


async def test_evacuation_asks_the_controller_and_records_the_move(cluster: tuple[str, Store]) -> None:
    url, store = cluster
    result, recording = await _evacuate_h1(store, FakeController(store))
    assert result.ok, result.error
    assert result.moves == (("db-0", "h1", "h2", "cold"),)
    [req] = await asyncio.to_thread(intent_requests, url)
    assert (req["kind"], req["guest"], req["avoid"], req["target"], req["requester"]) == (
        "migrate", "db-0", "h1", None, "patcher")
    assert "patch-rollout-0123456789ab" in req["reason"]
    [stored] = await asyncio.to_thread(rollouts, url)
    assert stored["hosts"]["h1"]["moves"] == [["db-0", "h1", "h2", "cold"]]  # recorded once accepted
    assert recording.placement_writes() == []


async def test_a_refused_evacuation_fails_the_step_with_the_controllers_words(cluster: tuple[str, Store]) -> None:
    _url, store = cluster
    refusing = FakeController(store, refuse={"db-0": "no other host fits db-0: not enough memory"})
    result, recording = await _evacuate_h1(store, refusing)
    assert not result.ok and result.moves == ()
    assert result.error is not None and result.error.startswith("cannot move db-0: the controller refused")
    assert "no other host fits db-0: not enough memory" in result.error
    assert (await store.get_json(keys.guest_desired(CLUSTER, "db-0")))["host"] == "h1"
    assert recording.placement_writes() == []


async def test_a_failed_move_fails_the_step(cluster: tuple[str, Store]) -> None:
    _url, store = cluster
    result, _recording = await _evacuate_h1(store, FakeController(store, fail={"db-0": "db-0 did not reach h2"}))
    assert not result.ok and result.error is not None
    assert "moving db-0 to h2 failed: db-0 did not reach h2" in result.error


@pytest.mark.parametrize(("step", "enter"), [(Step.ENTER_MAINTENANCE, True), (Step.EXIT_MAINTENANCE, False)])
async def test_maintenance_is_an_intent(cluster: tuple[str, Store], step: Step, enter: bool) -> None:
    url, store = cluster
    if not enter:
        await store.put_json(keys.leader(CLUSTER), {"hosts": {h: "up" for h in HOSTS}, "maintenance": ["h1"],
                                                    "updated_at": time.time()})
    patcher, recording, stop, task = await _patcher(store, FakeController(store), "h1", step)
    result = await _step(patcher, "h1", step, stop, task)
    assert result.ok, result.error
    [req] = await asyncio.to_thread(intent_requests, url)
    assert (req["kind"], req["host"], req["enter"], req["requester"]) == ("maintenance", "h1", enter, "patcher")
    assert not enter or req["evacuate"] is False
    desired = await store.get_json(keys.host_desired(CLUSTER, "h1"))
    assert desired["state"] == ("maintenance" if enter else "up") and desired["by"] == "patcher"
    assert recording.placement_writes() == []


async def test_auto_failback_asks_for_the_guests_back_home(cluster: tuple[str, Store]) -> None:
    url, store = cluster
    stored = await get_spec(store, CLUSTER)
    assert stored is not None
    ha = stored.spec.policies.ha.model_copy(update={"failback": FailbackMode.AUTO})
    await put_spec(store, stored.spec.model_copy(update={"policies": stored.spec.policies.model_copy(
        update={"ha": ha})}))
    patcher, recording, stop, task = await _patcher(store, FakeController(store), "h1", Step.EVACUATE)
    await patcher._step("h1", Step.EVACUATE)  # db-0 -> h2
    patcher.rollout, _ = await patcher._observe(StepResult("h1", Step.EVACUATE, ok=True))
    while patcher.rollout.hosts["h1"].step is not Step.FAILBACK:
        patcher.rollout, _ = await patcher._observe(StepResult("h1", patcher.rollout.hosts["h1"].step, ok=True))
    result = await _step(patcher, "h1", Step.FAILBACK, stop, task)
    assert result.ok and result.moves == (("db-0", "h2", "h1", "cold"),), result
    asked = {(r["guest"], r["avoid"], r["target"]) for r in await asyncio.to_thread(intent_requests, url)}
    assert asked == {("db-0", "h1", None), ("db-0", None, "h1")}  # off h1, then back home (explicit target)
    assert recording.placement_writes() == []


async def test_a_replacement_is_an_intent_and_a_refusal_never_falls_back_to_the_same_host(
        cluster: tuple[str, Store]) -> None:
    url, store = cluster
    stop = asyncio.Event()
    controller = FakeController(store, refuse={"db-1": "no other host fits db-1: hard spread"})
    task = asyncio.create_task(controller.run(stop))
    recording = Recording(store)
    updater = GuestUpdater(recording, CLUSTER, health_timeout=5.0)
    try:
        ok, reason = await updater._replace("db-0", {"command": ["v2"]}, "guest-update-0123456789ab")
        assert ok, reason
        refused, why = await updater._replace("db-1", {"command": ["v2"]}, "guest-update-0123456789ab")
    finally:
        stop.set()
        await task
    d0 = await store.get_json(keys.guest_desired(CLUSTER, "db-0"))
    assert d0["host"] == "h2" and d0["command"] == ["v2"]
    assert not refused and why is not None and "no other host fits db-1: hard spread" in why
    assert (await store.get_json(keys.guest_desired(CLUSTER, "db-1")))["host"] == "h2"  # untouched
    reqs = await asyncio.to_thread(intent_requests, url)
    assert sorted((r["kind"], r["guest"], r["avoid"], r["changes"], r["requester"]) for r in reqs) == [
        ("replace", "db-0", "h1", {"command": ["v2"]}, "guest-update"),
        ("replace", "db-1", "h2", {"command": ["v2"]}, "guest-update")]
    assert recording.placement_writes() == []


def test_the_agents_patch_request_lives_under_its_host() -> None:
    parsed = keys.parse(request_key(CLUSTER, "rollout"))
    assert (parsed.kind, parsed.name, parsed.leaf) == ("hosts", "rollout", "patch")
    assert keys.parse(keys.op_lock(CLUSTER, "patch-rollout-0123456789ab")).leaf == "lock"
