"""The hardware watcher: poll every host's BMC over Redfish, record health, apply the policy.

Role: one asyncio task per host reads the host's hardware through sushy
(``nonstop.bmc.inventory.read_inventory``) every ``interval`` seconds, turns it into a
``HostAssessment`` (nonstop/core/components/redundancy.py), and then

- writes ``hosts/<h>/components`` (health, groups, policy state, ``placement``) when it changes;
- emits one event per transition (``component``, ``group-state``, ``host-health``) and per
  policy action into the cluster's event log (``nonstop.store.events.EventLog``);
- steps the host's policy machine (nonstop/core/components/policy.py) and applies its actions:
  ``alert`` (an event), ``restrict`` (``placement: no-new-guests`` in the components key),
  ``evacuate`` (a maintenance request with evacuation in ``hosts/<h>/desired`` — the
  controller's documented request key, so the controller moves the guests with its own
  placement and live migration), ``release`` (the maintenance request is withdrawn, only if it
  is still ours), ``hand-over`` (same withdrawal when the host failed, so HA fails it over).

Redfish events: where a BMC offers an EventService (the lab BMC does), the watcher subscribes
with a listener of its own (nonstop/components/events.py) and an Event wakes that host's loop
at once — detection is one read (~20–60 ms) after the change. Polling every ``interval``
stays underneath (sushy-emulator has no events; an event may be lost); the subscription is
checked every ``RESUBSCRIBE`` seconds and made again if the BMC forgot it (a BMC restart).

Blocking sushy calls run in one worker thread per host; with ``netns`` that thread lives in
the namespace where the BMCs listen (the lab's ctl namespace). A BMC that cannot be read
makes the host ``unknown`` — logged and recorded, never taken as a repair.

Must not: move guests itself, fence, or power hosts (the controller and fence agents do), or
decide policy (the core does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nonstop.core.components.policy import Action, HostPolicy, OnDegraded, PolicyState, step
from nonstop.core.components.redundancy import ComponentEvent, HostAssessment, HostHealth, assess, changes
from nonstop.core.ha.hardware import HardwareInventory
from nonstop.core.spec import ClusterSpec
from nonstop.store import intents, keys
from nonstop.store.base import Store, StoreError
from nonstop.store.events import EventLog
from nonstop.store.records import EventRecord, HostComponents, HostDesired, RecordError, put

log = logging.getLogger("nonstop.components")

OWNER = "components"
"""Marks maintenance requests this watcher wrote (``by`` in ``hosts/<h>/desired``)."""
RESUBSCRIBE = 30.0


@dataclass
class HostWatch:
    host: str
    url: str
    username: str
    password: str
    assessment: HostAssessment | None = None
    policy: HostPolicy = field(default_factory=HostPolicy)
    inventory: HardwareInventory | None = None
    last_read: float | None = None
    read_seconds: float = 0.0
    errors: int = 0
    written: str = ""
    events: list[ComponentEvent] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    subscription: str | None = None
    """URI of our event subscription on the BMC; None = polling only."""
    subscription_checked: float = 0.0
    redfish_events: int = 0


def _read_blocking(url: str, username: str, password: str, system: str, timeout: float) -> HardwareInventory:
    from nonstop.bmc.inventory import read_inventory, redfish_session

    with redfish_session(url, username, password, timeout=timeout) as root:
        return read_inventory(root, system)


class HardwareWatcher:
    """Watch the BMCs of ``bmc_urls`` ({host: "http://127.0.0.1:PORT"}) for ``spec``'s cluster."""

    def __init__(self, store: Store, spec: ClusterSpec, bmc_urls: dict[str, str], *,
                 password: str | Callable[[str], str], interval: float = 0.5, netns: str | None = None,
                 timeout: float = 2.0, on_event: Callable[[EventRecord], None] | None = None,
                 system_ids: dict[str, str] | None = None, redfish_events: bool = True,
                 event_address: str = "127.0.0.1") -> None:
        """``system_ids``: the Redfish system Id of a host when it is not the host's name.
        ``redfish_events``: subscribe to BMC events where offered, with a listener on
        ``event_address`` (in ``netns`` when given: where the BMCs are)."""
        self.store, self.spec, self.interval, self.netns, self.timeout = store, spec, interval, netns, timeout
        self.events = EventLog(store, spec.cluster)
        self.on_event = on_event
        policy = spec.policies.components
        self.on_degraded = OnDegraded(policy.on_degraded)
        self.stability_window = float(policy.stability_window)
        self.system_ids = dict(system_ids or {})
        self.hosts: dict[str, HostWatch] = {}
        for name, url in bmc_urls.items():
            host = spec.host(name)
            pw = password(name) if callable(password) else password
            self.hosts[name] = HostWatch(name, url if "://" in url else f"http://{url}", host.bmc.username, pw)
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.redfish_events, self.event_address = redfish_events, event_address
        self.listener: Any = None

    # ------------------------------------------------------------------ reading

    def _pool(self, host: str) -> ThreadPoolExecutor:
        if host not in self._pools:
            if self.netns is not None:
                from nonstop.net.netns import enter

                self._pools[host] = ThreadPoolExecutor(1, f"bmc-{host}", initializer=enter, initargs=(self.netns,))
            else:
                self._pools[host] = ThreadPoolExecutor(1, f"bmc-{host}")
        return self._pools[host]

    async def read(self, host: str) -> HardwareInventory | None:
        w = self.hosts[host]
        started = time.monotonic()
        future: Future[HardwareInventory] = self._pool(host).submit(
            _read_blocking, w.url, w.username, w.password, self.system_ids.get(host, host), self.timeout)
        try:
            inventory = await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001 - any failure to read is "unknown", never a crash
            w.errors += 1
            log.warning("BMC of %s unreadable: %s: %s", host, type(exc).__name__, exc)
            return None
        finally:
            w.read_seconds = time.monotonic() - started
        return inventory

    # ------------------------------------------------------------------ one pass

    async def poll_once(self, host: str) -> HostAssessment:
        w = self.hosts[host]
        inventory = await self.read(host)
        now = time.time()
        w.inventory, w.last_read = inventory, now
        if inventory is not None and not inventory.components and inventory.power_state is None:
            # Nothing read at all (401, no such system): the walk put it in ``missing``; that is
            # an unreadable BMC, not a host without parts.
            log.warning("BMC of %s gave nothing: %s", host, "; ".join(inventory.missing)[:300])
            w.errors += 1
            inventory = None
        after = assess(host, inventory)
        for event in changes(w.assessment, after, now):
            w.events.append(event)
            await self._emit(event.kind, f"{host}/{event.subject}" if event.subject != "host" else host,
                             f"{event.before} -> {event.after}" + (f": {event.reason}" if event.reason else ""),
                             host=host, before=event.before, after=event.after)
        if after.health is not HostHealth.UNKNOWN or w.assessment is None:
            w.assessment = after
        if inventory is not None:
            await self._ensure_subscription(w)
        decision = step(w.policy, after.health, now, self.on_degraded, self.stability_window)
        w.policy = decision.policy
        for action in decision.actions:
            await self._apply(w, action, decision.reason)
        await self._write(w, after)
        return after

    async def _ensure_subscription(self, w: HostWatch) -> None:
        """Subscribe to the host's BMC events (again, if the BMC forgot us); never fatal."""
        if self.listener is None or time.monotonic() - w.subscription_checked < RESUBSCRIBE:
            return
        from nonstop.components import events

        w.subscription_checked = time.monotonic()
        pool = self._pool(w.host)
        try:
            if w.subscription is not None and await asyncio.wrap_future(pool.submit(
                    events.subscription_alive, w.url, w.username, w.password, w.subscription, self.timeout)):
                return
            w.subscription = await asyncio.wrap_future(pool.submit(
                events.subscribe, w.url, w.username, w.password, self.listener.destination(w.host),
                f"nonstop-watcher-{self.spec.cluster}", self.timeout))
        except Exception as exc:  # noqa: BLE001 - no events: polling still covers the host
            log.info("no event subscription on the BMC of %s: %s: %s", w.host, type(exc).__name__, exc)
            w.subscription = None
        if w.subscription is not None:
            log.info("BMC of %s: events subscribed (%s)", w.host, w.subscription)

    def _on_redfish_event(self, host: str, payload: dict[str, Any]) -> None:
        w = self.hosts.get(host)
        if w is not None:
            w.redfish_events += 1
            w.wake.set()

    async def _start_listener(self) -> None:
        from nonstop.components import events

        if not self.redfish_events or not self.hosts:
            return
        try:
            sock = await asyncio.wrap_future(self._pool(next(iter(self.hosts))).submit(
                events.listening_socket, self.event_address))
            self.listener = await events.EventListener(sock, self._on_redfish_event).start()
        except OSError as exc:
            log.warning("no Redfish event listener (%s): polling only", exc)
            self.listener = None

    async def _stop_listener(self) -> None:
        from nonstop.components import events

        if self.listener is None:
            return
        futures = [asyncio.wrap_future(self._pool(w.host).submit(
            events.unsubscribe, w.url, w.username, w.password, w.subscription))
            for w in self.hosts.values() if w.subscription is not None]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 3.0)
        await self.listener.close()
        self.listener = None

    async def _emit(self, kind: str, subject: str, reason: str, **data: Any) -> None:
        record = await self.events.emit(kind, subject, reason, source=OWNER, **data)
        if self.on_event is not None:
            self.on_event(record)

    def placement(self, w: HostWatch) -> str:
        if w.policy.state is PolicyState.ACTING and self.on_degraded is not OnDegraded.ALERT:
            return "no-new-guests"
        if w.policy.state is PolicyState.SETTLING and self.on_degraded is not OnDegraded.ALERT:
            return "no-new-guests"
        return "normal" if w.policy.state is not PolicyState.DOWN else "failed"

    async def _write(self, w: HostWatch, assessment: HostAssessment) -> None:
        record = HostComponents.model_validate({
            **assessment.to_dict(), "policy": w.policy.state.value, "policy_since": w.policy.since,
            "on_degraded": self.on_degraded.value, "placement": self.placement(w),
            "read_at": w.last_read, "read_seconds": round(w.read_seconds, 4), "bmc_errors": w.errors,
            "events": "subscribed" if w.subscription is not None else "polling",
            "missing": list(w.inventory.missing) if w.inventory is not None else ["BMC unreadable"]})
        text = record.with_changes(read_at=None, read_seconds=None).encode().decode()
        if text == w.written:
            return
        try:
            await put(self.store, keys.host_components(self.spec.cluster, w.host), record)
            w.written = text
        except StoreError as exc:
            log.warning("components of %s not stored: %s", w.host, exc)

    # ------------------------------------------------------------------ actions

    async def _apply(self, w: HostWatch, action: Action, reason: str) -> None:
        why = w.assessment.reason if w.assessment is not None else ""
        if action is Action.ALERT:
            await self._emit("component-alert", w.host, f"{why} ({self.on_degraded.value})", host=w.host)
        elif action is Action.RESTRICT:
            await self._emit("component-policy", w.host, "no new guests", host=w.host, action=action.value)
        elif action is Action.EVACUATE:
            if await self._request_maintenance(w.host, f"{OWNER}: {why}"):
                await self._emit("component-policy", w.host, f"evacuation requested: {why}", host=w.host,
                                 action=action.value)
        elif action in (Action.RELEASE, Action.HAND_OVER):
            released = await self._withdraw_maintenance(w.host, f"{OWNER}: {reason}")
            await self._emit("component-policy", w.host, reason + ("; maintenance withdrawn" if released else ""),
                             host=w.host, action=action.value)

    async def _host_desired(self, host: str) -> HostDesired | None:
        kv = await self.store.get(keys.host_desired(self.spec.cluster, host))
        if kv is None:
            return None
        try:
            return HostDesired.decode(kv.value)
        except RecordError:
            return None

    async def _request_maintenance(self, host: str, reason: str) -> bool:
        """Ask the controller (a ``maintenance`` intent) to evacuate ``host`` unless it is in
        maintenance already (an operator's or an earlier request of ours)."""
        current = await self._host_desired(host)
        if current is not None and current.state == "maintenance":
            return False
        await intents.submit(self.store, self.spec.cluster, "maintenance", requester=OWNER, reason=reason,
                             host=host, enter=True, evacuate=True)
        return True

    async def _withdraw_maintenance(self, host: str, reason: str) -> bool:
        """Back to ``up`` — only a maintenance the controller entered at our request (an operator's stays)."""
        current = await self._host_desired(host)
        if current is None or current.state != "maintenance" or current.by != OWNER:
            return False
        await intents.submit(self.store, self.spec.cluster, "maintenance", requester=OWNER, reason=reason,
                             host=host, enter=False)
        return True

    # ------------------------------------------------------------------ loop

    async def _host_loop(self, host: str, stop: asyncio.Event) -> None:
        w = self.hosts[host]
        while not stop.is_set():
            started = time.monotonic()
            w.wake.clear()  # an event from now on means: read again
            try:
                await self.poll_once(host)
            except StoreError as exc:
                log.warning("watching %s: store: %s", host, exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(w.wake.wait(), max(0.0, self.interval - (time.monotonic() - started)))

    @staticmethod
    async def _wake_on_stop(stop: asyncio.Event, hosts: list[HostWatch]) -> None:
        await stop.wait()
        for w in hosts:
            w.wake.set()

    async def follow_spec(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Pick up ``policies.components`` changes from the stored spec (``nonstop apply``)."""
        from nonstop.store.state import get_spec

        while not stop.is_set():
            with contextlib.suppress(StoreError, ValueError):
                stored = await get_spec(self.store, self.spec.cluster)
                if stored is not None:
                    policy = stored.spec.policies.components
                    on_degraded, window = OnDegraded(policy.on_degraded), float(policy.stability_window)
                    if (on_degraded, window) != (self.on_degraded, self.stability_window):
                        log.info("component policy now %s, stability window %g s", on_degraded.value, window)
                        self.on_degraded, self.stability_window = on_degraded, window
                        for w in self.hosts.values():
                            w.written = ""  # rewrite the record with the new policy
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def run(self, stop: asyncio.Event, *, follow_spec: bool = False) -> None:
        for w in self.hosts.values():
            w.wake = asyncio.Event()  # bound to this loop
        await self._start_listener()
        self._tasks = [asyncio.create_task(self._host_loop(h, stop), name=f"components-{h}") for h in self.hosts]
        self._tasks.append(asyncio.create_task(self._wake_on_stop(stop, list(self.hosts.values()))))
        if follow_spec:
            self._tasks.append(asyncio.create_task(self.follow_spec(stop), name="components-spec"))
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._stop_listener()
            for pool in self._pools.values():
                pool.shutdown(wait=False, cancel_futures=True)
            self._pools.clear()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """host → its last assessment, policy state and placement (for the API and dashboard)."""
        out = {}
        for name, w in self.hosts.items():
            base = w.assessment.to_dict() if w.assessment is not None else {"host": name, "health": "unknown"}
            out[name] = {**base, "policy": w.policy.state.value, "placement": self.placement(w), "bmc_errors": w.errors,
                         "events": "subscribed" if w.subscription is not None else "polling"}
        return out


async def run_hardware_watcher(store: Store, spec: ClusterSpec, bmc_urls: dict[str, str], *,
                               password: str | Callable[[str], str], stop: asyncio.Event,
                               interval: float = 0.5, netns: str | None = None, registry: Any = None,
                               watcher_ready: Callable[[HardwareWatcher], None] | None = None,
                               follow_spec: bool = False) -> None:
    """Run the watcher until ``stop`` is set. ``registry``: a prometheus_client registry to
    export component metrics into (nonstop/components/metrics.py). ``follow_spec``: take
    policy changes from the stored spec (the process does; a test's own spec does not)."""
    watcher = HardwareWatcher(store, spec, bmc_urls, password=password, interval=interval, netns=netns)
    if registry is not None:
        from nonstop.components.metrics import ComponentCollector

        registry.register(ComponentCollector(watcher))
    if watcher_ready is not None:
        watcher_ready(watcher)
    await watcher.run(stop, follow_spec=follow_spec)
