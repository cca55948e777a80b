"""A SQLite store seeded with a 3-host cluster as the controller and agents would have written it
(spec, three ``db`` replicas one per host, a fresh controller status with every host up), for the
CLI and API tests of ``nonstop patch`` that need no lab; and the rollout stored as an operation
(the newest ``patch-rollout`` in ``ops/``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from nonstop.core.patching.steps import KIND, Rollout
from nonstop.core.spec import ClusterSpec
from nonstop.store import keys, open_store, operations
from nonstop.store.operations import OperationRecord
from nonstop.store.state import put_spec

CLUSTER = "c"


def seed(path: Path, spread: str) -> str:
    """The store's URL; ``spread: hard`` makes every rollout unsafe (nowhere to evacuate a replica)."""
    spec = ClusterSpec.model_validate({
        "cluster": CLUSTER,
        "hosts": [{"name": f"h{i}", "cpus": 2, "memory": "2GiB", "disk": "10GiB", "nics": [{"name": "eth0"}]}
                  for i in (1, 2, 3)],
        "guests": [{"name": "db", "kind": "process", "replicas": 3, "vcpus": 1, "memory": "64MiB", "spread": spread}],
    })
    url = f"sqlite:///{path}"

    async def go() -> None:
        store = open_store(url)
        try:
            await put_spec(store, spec)
            for i in range(3):
                await store.put_json(keys.guest_desired(CLUSTER, f"db-{i}"), {
                    "name": f"db-{i}", "cluster": CLUSTER, "host": f"h{i + 1}", "kind": "process", "group": "db"})
            await store.put_json(keys.leader(CLUSTER), {"hosts": {"h1": "up", "h2": "up", "h3": "up"},
                                                        "maintenance": [], "updated_at": time.time()})
        finally:
            await store.close()

    asyncio.run(go())
    return url


def read(url: str, key: str) -> Any:
    return _with_store(url, lambda store: store.get_json(key))


def write(url: str, key: str, value: Any) -> None:
    _with_store(url, lambda store: store.put_json(key, value))


def _with_store(url: str, use: Any) -> Any:
    async def go() -> Any:
        store = open_store(url)
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())


def rollouts(url: str) -> list[dict[str, Any]]:
    """Every stored rollout (``Rollout.to_dict``), oldest first."""
    async def use(store: Any) -> list[dict[str, Any]]:
        records = await operations.list_operations(store, CLUSTER, KIND)
        return [Rollout.from_body(r.header, r.body).to_dict() for r in records]

    return list(_with_store(url, use))


def save_rollout(url: str, rollout: Rollout) -> None:
    async def use(store: Any) -> None:
        await operations.save(store, CLUSTER, OperationRecord.of(rollout.header, rollout.body()))

    _with_store(url, use)


def intent_requests(url: str) -> list[dict[str, Any]]:
    """Every intent written to the controller (``intents/<id>/request``)."""
    async def use(store: Any) -> list[dict[str, Any]]:
        kvs = await store.list(keys.intents_prefix(CLUSTER))
        return [json.loads(kv.value) for kv in kvs if kv.key.endswith("/request")]

    return list(_with_store(url, use))
