"""Fixtures for the API tests: a SQLite store seeded with a placed, running example lab, the real app.

The seeded state is what agents and the controller would have written for examples/lab.yaml
(spec, every guest's desired and observed record, hosts' presence keys and observed NICs/teams,
service backends, a few events). ``StoreLab`` is a small, real in-process "lab" for the chaos
routes: failing a host does to the store what the agent's death and the controller's failover
would (presence key gone, a failover operation, guests reassigned under a bumped epoch and
observed running on their new hosts) — the API and dashboard under test read it like any store.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from nonstop.api.actions import audit_event
from nonstop.controller import view as cv
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.placement import cluster_state_from_spec, config_from_spec, place
from nonstop.core.placement.report import plan_spec
from nonstop.specfile import load_spec
from nonstop.store import keys, open_store
from nonstop.store.base import Store, encode_json
from nonstop.store.state import put_spec

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
        await cv.assign(store, CLUSTER, definition, host, 0)
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
        self.delay = 0.3

    def faults(self) -> dict[str, Any]:
        return {"hosts": sorted(self.failed_hosts)}

    async def fail_host(self, host: str) -> dict[str, Any]:
        self.calls.append(("fail_host", (host,)))
        self.failed_hosts.add(host)
        asyncio.get_running_loop().create_task(self._failover(host))
        return {"failed": host}

    async def heal(self) -> dict[str, Any]:
        self.calls.append(("heal", ()))
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
            op_id = f"failover-{host}-1"
            op = {"type": "failover", "op_id": op_id, "host": host, "step": "fenced", "detected_at": detected,
                  "last_heard": detected - 0.8, "times": {"fenced": detected + 0.1}, "moves": [], "unplaced": []}
            await store.put(keys.op(CLUSTER, op_id), encode_json(op))
            await audit_event(store, CLUSTER, "host-dead", host, "every link silent", "controller")
            view = await cv.read_view(store, CLUSTER)
            spec_kv = await store.get(keys.spec(CLUSTER))
            assert spec_kv is not None
            from nonstop.core.spec import ClusterSpec

            spec = ClusterSpec.model_validate_json(spec_kv.value)
            states = {h.name: ("failed" if h.name in self.failed_hosts else "up") for h in spec.hosts}
            assignments = {g: d.host for g, d in view.desired.items()}
            moving = [g for g, h in assignments.items() if h == host]
            for g in moving:
                assignments.pop(g)
            state = cluster_state_from_spec(spec, host_states=states, assignments=assignments)
            result = place(state, pending=moving, config=config_from_spec(spec))
            moves = []
            for guest, target in result.placed:
                definition = view.desired[guest]
                epoch = await cv.assign(store, CLUSTER, definition, target, view.epochs.get(guest, 1))
                await observe_running(store, guest, target, definition.address or "", definition.vcpus,
                                      definition.memory, epoch)
                await audit_event(store, CLUSTER, "guest-moved", guest, f"failover of {host}: restarting on {target}",
                                  "controller", target=target)
                moves.append([guest, target])
            op.update(step="done", moves=moves, times={"fenced": detected + 0.1, "done": time.time()})
            await store.put(keys.op(CLUSTER, op_id), encode_json(op))
        finally:
            await store.close()


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
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


def tokens(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())


class RunningServer:
    """The real app under uvicorn on 127.0.0.1 (a free port), in a thread of this process, so an
    in-process lab object can share the server's event loop."""

    def __init__(self, app: Any) -> None:
        import socket
        import threading

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
