"""The API server's live state: the store, a cached cluster snapshot, the change fan-out, and
balancer statistics.

Role: one ``ApiRuntime`` per app, started in the app's lifespan (inside the event loop that
serves requests, as the store requires). A single store watch on ``/nonstop/<cluster>/`` marks
the snapshot stale and hands every change to the SSE subscribers (bounded queues: a slow
browser loses messages, never the server's memory — it is told to refetch). A poller reads each
known balancer's admin API (``GET /services/<svc>``, docs/lb.md, through
``nonstop.lb.client.BalancerAdminClient``) once a second and turns request counters into
per-backend rates for the dashboard and metrics. Beside a lab, the balancers are reached from
the namespace the lab names (``admin_namespace``), so this module needs no lab import.

Must not: write to the store (``nonstop.api.actions`` does), or block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from nonstop.api import snapshot
from nonstop.api.chaos import LabChaos
from nonstop.lb.client import BalancerAdminClient, BalancerAdminError
from nonstop.store import keys, open_store
from nonstop.store.base import EventType, Store, StoreError
from nonstop.store.records import EventRecord, RecordError

log = logging.getLogger("nonstop.api")

SUBSCRIBER_QUEUE = 256
LB_POLL_SECONDS = 1.0
LB_POLL_TIMEOUT = 0.8
"""Seconds for each step of one poll of a balancer (connect, then the answer)."""


class ApiRuntime:
    def __init__(self, store_url: str, cluster: str, lab: Any = None,
                 balancers: Mapping[str, str] | None = None) -> None:
        self.store_url, self.cluster, self.lab = store_url, cluster, lab
        self.chaos = LabChaos(lab) if lab is not None else None
        self._netns_thread: Any = None
        """A thread inside the lab's ctl namespace, where the balancers' admin APIs are reachable."""
        self.balancers = dict(balancers or {})
        """service → admin address of its balancer (``ip:port``)."""
        self._admin_clients: dict[str, BalancerAdminClient] = {}
        """admin address → its client (this loop's; a poll from the lab's namespace makes its own)."""
        self.store: Store | None = None
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.lb_stats: dict[str, dict[str, Any]] = {}
        self._last_counts: dict[tuple[str, str], tuple[float, int]] = {}
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_revision = -1
        self._revision = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self.started_at = time.time()
        self.changes_seen = 0

    async def start(self) -> None:
        self.store = open_store(self.store_url)
        self._revision = await self.store.revision()
        self._tasks.append(asyncio.create_task(self._watch(), name="api-watch"))
        self._tasks.append(asyncio.create_task(self._poll_balancers(), name="api-lb-poll"))

    async def stop(self) -> None:
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.store is not None:
            await self.store.close()
        for client in self._admin_clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        self._admin_clients.clear()
        if self._netns_thread is not None:
            self._netns_thread.close()

    # --------------------------------------------------------------- reading

    def lab_balancers(self) -> dict[str, str]:
        """service → balancer admin address: the lab's (``LabCluster.services[svc]["admin"]``) and given ones."""
        found: dict[str, str] = {}
        services = getattr(self.lab, "services", None) if self.lab is not None else None
        if isinstance(services, Mapping):
            for name, info in services.items():
                if isinstance(info, Mapping) and isinstance(info.get("admin"), str):
                    found[str(name)] = str(info["admin"]).split()[0]
        return {**found, **self.balancers}

    def faults(self) -> dict[str, Any]:
        if self.chaos is None:
            return {}
        try:
            return self.chaos.faults()
        except Exception as exc:  # noqa: BLE001 - a lab that cannot say its faults must not break reads
            log.warning("lab faults unreadable: %s", exc)
            return {}

    async def snapshot(self) -> dict[str, Any]:
        """The snapshot, re-read from the store only when something changed since the last read."""
        assert self.store is not None
        async with self._lock:
            if self._snapshot is None or self._snapshot_revision != self._revision:
                seen = self._revision
                raw = await snapshot.read_raw(self.store, self.cluster)
                self._snapshot = snapshot.build(raw, self.cluster, self.lb_stats, self.faults())
                self._snapshot_revision = seen
            return {**self._snapshot, "faults": self.faults(), "services": self._snapshot["services"]}

    def invalidate(self) -> None:
        self._revision += 1

    # --------------------------------------------------------------- watching

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(queue)

    def publish(self, message: dict[str, Any]) -> None:
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # The browser is behind: drop what is queued and tell it to refetch everything.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "resync"})

    async def _watch(self) -> None:
        assert self.store is not None
        prefix = keys.cluster_prefix(self.cluster)
        while True:
            try:
                start = await self.store.revision() + 1
                async with self.store.watch(prefix, start_revision=start) as events:
                    self.invalidate()
                    self.publish({"type": "resync"})
                    async for event in events:
                        self.invalidate()
                        self.changes_seen += 1
                        self.publish(_change_message(event))
            except asyncio.CancelledError:
                raise
            except (StoreError, OSError) as exc:
                log.warning("store watch failed (%s); re-listing in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _poll_balancers(self) -> None:
        while True:
            balancers = self.lab_balancers()
            before = json.dumps(self.lb_stats, sort_keys=True, default=str)
            for service, admin in balancers.items():
                await self._poll_one(service, admin)
            if balancers and json.dumps(self.lb_stats, sort_keys=True, default=str) != before:
                # Health and rates live in the balancers, not the store: tell dashboards to refetch.
                self.invalidate()
                self.publish({"type": "stats"})
            await asyncio.sleep(LB_POLL_SECONDS)

    def lab_admin_namespace(self) -> str | None:
        """The namespace the lab's balancer admin APIs are reached from, when the API runs beside
        a lab that has one (``admin_namespace`` of ``nonstop.lab.cluster.LabCluster``), else None."""
        ns = getattr(self.lab, "admin_namespace", None) if self.lab is not None else None
        if not isinstance(ns, str):
            return None
        from nonstop.net import netns

        return ns if netns.exists(ns) else None

    def _lab_netns(self) -> Any:
        """A thread inside the lab's admin namespace, when there is one (else None)."""
        if self._netns_thread is None:
            ns = self.lab_admin_namespace()
            if ns is not None:
                from nonstop.net import netns

                self._netns_thread = netns.NetnsThread(ns)
        return self._netns_thread

    async def _read_service(self, admin: str, service: str) -> dict[str, Any]:
        """``GET /services/<service>`` of the balancer at ``admin``, from the lab's namespace when
        there is one (a client of that thread's own loop for each poll)."""
        thread = self._lab_netns()
        if thread is None:
            client = self._admin_clients.get(admin)
            if client is None:
                client = self._admin_clients[admin] = BalancerAdminClient(admin, timeout=LB_POLL_TIMEOUT)
            return await client.get_service(service)

        async def once() -> dict[str, Any]:
            async with BalancerAdminClient(admin, timeout=LB_POLL_TIMEOUT) as client:
                return await client.get_service(service)

        def get() -> dict[str, Any]:
            return asyncio.run(once())

        return await asyncio.wrap_future(thread.submit(get))

    async def _poll_one(self, service: str, admin: str) -> None:
        now = time.monotonic()
        try:
            doc = await self._read_service(admin, service)
        except BalancerAdminError as exc:
            self.lb_stats[service] = {"admin": admin, "error": str(exc), "backends": {}, "rate": 0.0}
            return
        backends: dict[str, Any] = {}
        total_rate = 0.0
        for b in doc.get("backends") or []:
            name = str(b.get("name"))
            requests = int((b.get("stats") or {}).get("requests", 0))
            before = self._last_counts.get((service, name))
            rate = 0.0
            if before is not None and now > before[0]:
                rate = max(0.0, (requests - before[1]) / (now - before[0]))
            self._last_counts[(service, name)] = (now, requests)
            total_rate += rate
            backends[name] = {"address": b.get("address"), "health": b.get("health"), "admin": b.get("admin"),
                              "active": b.get("active", 0),
                              "serving": b.get("serving"), "requests": requests, "rate": round(rate, 2),
                              "errors": int((b.get("stats") or {}).get("errors", 0))}
        listen = None
        services = getattr(self.lab, "services", None) if self.lab is not None else None
        if isinstance(services, Mapping) and isinstance(services.get(service), Mapping):
            listen = services[service].get("listen")
        self.lb_stats[service] = {"admin": admin, "backends": backends, "rate": round(total_rate, 2),
                                  "listen": listen,
                                  "requests": int((doc.get("stats") or {}).get("requests", 0))}


def _change_message(event: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "change", "op": "delete" if event.type == EventType.DELETE else "put",
                               "key": event.key, "revision": event.revision}
    try:
        parsed = keys.parse(event.key)
        message.update(kind=parsed.kind, name=parsed.name, leaf=parsed.leaf)
    except ValueError:
        pass
    if message.get("kind") == "events" and event.type == EventType.PUT:
        with contextlib.suppress(RecordError):
            message["event"] = EventRecord.decode(event.value).data()
            message["type"] = "event"
    return message
