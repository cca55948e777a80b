"""Fixtures for the API tests: a SQLite store seeded with a placed, running example lab, the real app.

The seeded state is what agents and the controller would have written for examples/lab.yaml
(spec, every guest's epoch key and desired record — as the controller's ``Applier`` writes them —
and observed record, hosts' presence keys and observed NICs/teams, service backends, a few
events). ``StoreLab`` is a small, real in-process "lab" for the chaos routes: failing a host does
to the store what the agent's death and the controller's failover would (presence key gone,
guests reassigned under a bumped epoch and observed running on their new hosts, the failover
stored as a finished ``failover`` operation) — the API and dashboard under test read it like any
store; a PSU, NIC or drive it fails or repairs (``fail_component``, as ``LabCluster`` has it) is
only remembered. ``ControllerStandIn`` answers the API's intents with the controller's real ``decide`` and
``Applier`` (the ``controller`` fixture runs one for a test).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nonstop.api.actions import audit_event
from nonstop.controller.apply import Applier, failover_record
from nonstop.controller.fencing import FenceRunner
from nonstop.controller.lbsync import LbSync
from nonstop.controller.reader import build_view
from nonstop.core.controller import commands as c
from nonstop.core.controller.decide import decide
from nonstop.core.controller.memory import ControllerMemory
from nonstop.core.controller.ops import FailoverOp, Step
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.placement import cluster_state_from_spec, config_from_spec, place
from nonstop.core.placement.report import plan_spec
from nonstop.core.spec import ClusterSpec
from nonstop.specfile import load_spec
from nonstop.store import cluster_records, keys, open_store, operations
from nonstop.store.base import Op, Store, encode_json
from nonstop.store.cache import StoreCache
from nonstop.store.events import EventLog
from nonstop.store.state import get_spec, put_spec

ROOT = Path(__file__).resolve().parents[2]
LAB_YAML = ROOT / "examples" / "lab.yaml"
CLUSTER = "lab"


def _event(seq: int, kind: str, subject: str, reason: str, **data: Any) -> tuple[str, bytes]:
    record = {"seq": seq, "at": seq / 1e9, "kind": kind, "subject": subject, "reason": reason, **data}
    return keys.event(CLUSTER, seq), encode_json(record)


async def seed(store: Store) -> dict[str, str]:
    spec = load_spec(LAB_YAML)
    await put_spec(store, spec)
    plan = plan_spec(spec)
    placed = dict(plan.placement.placed)
    now = time.time()
    for i, (guest, host) in enumerate(sorted(placed.items())):
        group = spec.group(guest.rsplit("-", 1)[0])
        address = f"198.18.10.{10 + i}"
        definition = GuestDefinition.from_group(group, name=guest, cluster=CLUSTER, host=host,
                                                addresses=[address], fencing_epoch=1)
        await assign(store, definition, host, 1)
        await observe_running(store, guest, host, address, definition.vcpus, definition.memory)
    for h in spec.hosts:
        await store.put_json(keys.host_alive(CLUSTER, h.name), {"host": h.name, "pid": 1, "started_at": now})
        await store.put_json(keys.host_observed(CLUSTER, h.name), {
            "nics": {n.name: {"state": "up"} for n in h.nics},
            "teams": {t.name: {"state": "up", "active": t.primary or t.members[0],
                               "members": {m: {"state": "up"} for m in t.members}} for t in h.teams},
            "usage": {"cpu_usage": 0.3, "memory_used": 900 * 1024**2},
        })
    for h in spec.hosts:  # what the hardware watcher records (HostAssessment.to_dict + policy): host3 lost a PSU
        psu_failed = ["PSU2"] if h.name == "host3" else []

        def group(state: str, working: int, total: int, failed: list[str]) -> dict[str, Any]:
            return {"state": state, "working": working, "total": total, "failed": failed}

        await store.put_json(keys.host_components(CLUSTER, h.name), {
            "host": h.name, "health": "degraded" if psu_failed else "healthy", "power_state": "On",
            "reason": "power: 1 of 2 working (failed PSU2)" if psu_failed else "", "policy": "normal",
            "placement": "normal", "groups": {
                "power": group("degraded" if psu_failed else "redundant", 2 - len(psu_failed), 2, psu_failed),
                "cooling": group("redundant", 2, 2, []),
                "network": group("redundant", 2, 2, []),
                "storage": group("redundant", 2, 2, [])}})
    for s in spec.services:
        members = [g for g in placed if s.backends and g.startswith(s.backends.group + "-")]
        await store.put_json(keys.service_backends(CLUSTER, s.name), {"backends": [
            {"name": g, "address": f"198.18.10.{10 + sorted(placed).index(g)}:{s.backends.port}", "weight": 1}
            for g in members]})
    seq = time.time_ns()
    for n, (kind, subject, reason) in enumerate([("guest-placed", "web-0", "initial placement"),
                                                  ("host-state", "host1", "unknown -> up: all links up")]):
        key, value = _event(seq + n, kind, subject, reason, before="unknown", after="up")
        await store.put(key, value)
    return placed


async def assign(store: Store, definition: GuestDefinition, host: str, epoch: int) -> None:
    """``definition`` on ``host`` under ``epoch``, written as the controller's ``Applier`` assigns a
    guest: its epoch key and its desired record in one transaction."""
    record = definition.with_changes(host=host, fencing_epoch=epoch, migrate_to=None, migration_id=None)
    await store.txn([], [Op.put_json(keys.epoch(CLUSTER, record.name), epoch),
                         Op.put_json(keys.guest_desired(CLUSTER, record.name), record.to_dict())])


async def observe_running(store: Store, guest: str, host: str, address: str, vcpus: int, memory: int,
                          epoch: int = 1) -> None:
    await store.put_json(keys.guest_observed(CLUSTER, guest), {
        "name": guest, "state": "running", "host": host, "address": address, "vcpus": vcpus, "memory": memory,
        "fencing_epoch": epoch, "cpu_usage": 0.05, "memory_usage": memory // 2, "updated_at": time.time()})


class StoreLab:
    """A real in-process lab stand-in for the chaos routes: it changes the store as the agent's
    death and the controller's failover would. Calls are recorded so tests can check what ran."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.failed_hosts: set[str] = set()
        self.failed_components: set[tuple[str, str, str]] = set()
        self.delay = 0.3

    def faults(self) -> dict[str, Any]:
        return {"hosts": sorted(self.failed_hosts)}

    async def fail_host(self, host: str) -> dict[str, Any]:
        self.calls.append(("fail_host", (host,)))
        self.failed_hosts.add(host)
        asyncio.get_running_loop().create_task(self._failover(host))
        return {"failed": host}

    def fail_component(self, kind: str, host: str, name: str) -> dict[str, Any]:
        """As ``LabCluster.fail_component`` answers: the host's BMC summary afterwards."""
        self.calls.append(("fail_component", (kind, host, name)))
        self.failed_components.add((host, kind, name))
        return self._bmc_summary(host)

    def repair_component(self, kind: str, host: str, name: str) -> dict[str, Any]:
        self.calls.append(("repair_component", (kind, host, name)))
        self.failed_components.discard((host, kind, name))
        return self._bmc_summary(host)

    def _bmc_summary(self, host: str) -> dict[str, Any]:
        failed = sorted(f"{k}/{n}" for h, k, n in self.failed_components if h == host)
        return {"host": host, "power": "On", "failed": failed}

    async def heal(self) -> dict[str, Any]:
        self.calls.append(("heal", ()))
        self.failed_components.clear()
        healed = sorted(self.failed_hosts)
        store = open_store(self.store_url)
        try:
            for host in healed:
                await store.put_json(keys.host_alive(CLUSTER, host), {"host": host, "pid": 2, "started_at": time.time()})
        finally:
            await store.close()
        self.failed_hosts.clear()
        return {"healed": healed}

    async def _failover(self, host: str) -> None:
        store = open_store(self.store_url)
        try:
            await store.delete(keys.host_alive(CLUSTER, host))
            await store.delete(keys.host_observed(CLUSTER, host))
            await asyncio.sleep(self.delay)
            detected = time.time()
            await audit_event(store, CLUSTER, "host-dead", host, "every link silent", "controller")
            stored = await get_spec(store, CLUSTER)
            assert stored is not None
            spec = stored.spec
            records = await cluster_records.read_cluster(store, CLUSTER)
            states = {h.name: ("failed" if h.name in self.failed_hosts else "up") for h in spec.hosts}
            assignments = records.assignments()
            moving = [g for g, h in assignments.items() if h == host]
            for g in moving:
                assignments.pop(g)
            state = cluster_state_from_spec(spec, host_states=states, assignments=assignments)
            result = place(state, pending=moving, config=config_from_spec(spec))
            fenced = time.time()
            for guest, target in result.placed:
                definition = records.guests[guest].desired
                assert definition is not None
                epoch = max(records.guests[guest].epoch, definition.fencing_epoch) + 1
                await assign(store, definition, target, epoch)
                await observe_running(store, guest, target, definition.address or "", definition.vcpus,
                                      definition.memory, epoch)
                await audit_event(store, CLUSTER, "guest-moved", guest, f"failover of {host}: restarting on {target}",
                                  "controller", target=target)
            # Stored once it is over, as the controller's last save of it reads: a failover a
            # controller stand-in could see half-way would be one for it to drive too.
            done = time.time()
            op = FailoverOp(op_id=operations.new_op_id("failover"), host=host, step=Step.DONE, detected_at=detected,
                            last_heard=detected - 0.8, attempts=1, fence_agent="lab", fence_detail="StoreLab",
                            times={"detected": detected, "fencing": detected, "fenced": fenced, "moved": done,
                                   "done": done},
                            moves=tuple(result.placed), unplaced=tuple((u.guest, u.reason) for u in result.unplaced))
            await operations.save(store, CLUSTER, failover_record(op))
        finally:
            await store.close()


class ControllerStandIn:
    """The controller's decision path for tests without a lab: no heartbeats, fences or balancers.

    A thread with its own event loop and store connection runs a pass every ``every`` seconds:
    read the cluster (``read_cluster`` and the spec), build the view with the controller's
    ``build_view`` — every host ``up`` unless it is in maintenance — call the real ``decide`` and
    apply, with the real ``Applier`` (a ``StoreCache`` of the cluster, no balancers, a fence
    runner never asked), only the commands that answer intents and move or migrate guests
    (``APPLIED``). Placing new guests, failovers (``StoreLab`` plays those), fences and backends
    are left out, and so is an ``Emit`` about a left-out command's guest or host (it would be
    logged again every pass). The controller's memory stays in the thread.
    """

    APPLIED = (c.AnswerIntent, c.SetHostState, c.RequestMigration, c.CompleteMigration, c.MoveGuest, c.Emit)

    def __init__(self, store_url: str, cluster: str = CLUSTER, every: float = 0.05) -> None:
        self.store_url, self.cluster, self.every = store_url, cluster, every
        self.passes = 0
        self.errors: list[str] = []
        self.spec: ClusterSpec | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="controller-stand-in",
                                        daemon=True)

    def __enter__(self) -> ControllerStandIn:
        self._thread.start()
        assert self._running.wait(10), "the controller stand-in did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the controller stand-in did not stop"

    @classmethod
    def applied(cls, commands: Sequence[c.Command]) -> list[c.Command]:
        left_out = set()
        for cmd in commands:
            if not isinstance(cmd, (*cls.APPLIED, c.SetBackends)):
                left_out.add(cmd.op.host if isinstance(cmd, c.SaveFailover) else getattr(cmd, "guest", None)
                             or getattr(cmd, "host", None))
        return [cmd for cmd in commands
                if isinstance(cmd, cls.APPLIED) and not (isinstance(cmd, c.Emit) and cmd.subject in left_out)]

    async def _run(self) -> None:
        store = open_store(self.store_url)
        cache = StoreCache(store, keys.cluster_prefix(self.cluster),
                           keep=lambda key: cluster_records.wanted(key, self.cluster))

        async def never(*_args: object) -> None:
            raise AssertionError("the controller stand-in runs no fence")

        fences = FenceRunner(bmcs={}, password_file=None, timeout=1.0, last_heard=lambda _h: None,
                             wake=lambda: None, report=never)
        applier = Applier(store, self.cluster, cache, events=EventLog(store, self.cluster),
                          lb=LbSync(store, self.cluster, {}), fences=fences, spec=self._spec)
        memory, leading_since = ControllerMemory(), time.time()
        try:
            await cache.start()
            while not self._stop.is_set():
                try:
                    memory = await self._pass(store, cache, applier, memory, leading_since)
                except Exception as exc:  # noqa: BLE001 - recorded for the test; the next pass tries again
                    logging.getLogger("tests.api.standin").exception("controller stand-in pass failed")
                    self.errors.append(repr(exc))
                self._running.set()
                await asyncio.sleep(self.every)
        finally:
            self._running.set()
            await cache.close()
            await store.close()

    def _spec(self) -> ClusterSpec:
        assert self.spec is not None
        return self.spec

    async def _pass(self, store: Store, cache: StoreCache, applier: Applier, memory: ControllerMemory,
                    leading_since: float) -> ControllerMemory:
        stored = await get_spec(store, self.cluster)
        if stored is None:
            return memory
        self.spec = stored.spec
        revision = await store.revision()
        records = await cluster_records.read_cluster(store, self.cluster)
        deadline = time.monotonic() + 1.0
        while cache.revision < revision and time.monotonic() < deadline:  # the applier reads its cache
            await asyncio.sleep(0.005)
        maintenance = {h for h, r in records.hosts.items() if r.desired.state == "maintenance"}
        view = build_view(stored.spec, records, now=time.time(),
                          liveness=lambda h: "maintenance" if h in maintenance else "up", last_heard=lambda _h: None,
                          fence_results={}, ready=frozenset(), leading_since=leading_since, startup_grace=5.0,
                          serving_timeout=60.0)
        decision = decide(view, memory)
        await applier.apply(self.applied(decision.commands))
        self.passes += 1
        return decision.memory


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/state.db"

    async def go() -> None:
        store = open_store(url)
        try:
            await seed(store)
        finally:
            await store.close()

    asyncio.run(go())
    return url


@pytest.fixture
def controller(store_url: str) -> Iterator[ControllerStandIn]:
    """The seeded store's controller stand-in, running for the test (stopped at teardown)."""
    with ControllerStandIn(store_url) as standin:
        yield standin
    assert not standin.errors, standin.errors


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


def tokens(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())


class RunningServer:
    """The real app under uvicorn on 127.0.0.1 (a free port), in a thread of this process, so an
    in-process lab object can share the server's event loop."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # Open SSE streams never end by themselves: give them 1 s at shutdown, as ApiServer does (2 s).
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
