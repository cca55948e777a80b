"""Self-fencing: the agent stops its own guests when it may have been declared dead.

Role: the agent half of "never two running instances of a guest" (sbd's watchdog). Every
100 ms it asks the pure ``self_fence_decision``: has the store lease not been renewed, or has
the controller acknowledged no heartbeat on any link, for ``policies.ha.self_fence_timeout``?
Then it stops every guest of every driver at once (hard stop) and refuses to start any until
both are current again — the drivers are wrapped in a ``FenceGate`` whose ``start``/``spawn``
raise while fenced; while fenced it keeps stopping whatever runs (a start in flight when the
gate closed may finish later). The gate also answers ``status`` for a guest whose start is in
flight (STARTING) instead of asking the driver mid-start. The controller counts on this: when no fence device answers it waits
2 × the timeout after it last heard the host, then restarts the guests elsewhere.

Lease health is read back from the store: our ``hosts/<h>/alive`` key still carries the
agent's current lease (it vanishes when the lease expires).

Must not: touch the store's guest records (the controller owns placement) or decide
anything the pure decision does not say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nonstop.agent.heartbeats import AgentHeartbeats
from nonstop.core.guests.model import GuestState, GuestStatus
from nonstop.core.ha.selffence import self_fence_decision
from nonstop.drivers.base import Driver, GuestNotFound, GuestStartError
from nonstop.ha.keys import load_key
from nonstop.store import keys
from nonstop.store.base import Store, StoreError
from nonstop.vital import vital

log = logging.getLogger("nonstop.agent.selffence")


class FenceGate:
    """Holds the fenced flag; wraps drivers so nothing starts while it is set."""

    def __init__(self) -> None:
        self.fenced = False
        self.reason = ""
        self.fenced_at: float | None = None
        self.count = 0

    def wrap(self, drivers: Mapping[str, Driver]) -> dict[str, Driver]:
        return {kind: _gated(driver, self) for kind, driver in drivers.items()}


def _gated(driver: Driver, gate: FenceGate) -> Driver:
    cls = type(driver)
    starting: set[str] = set()
    """Guests whose start is in flight through this gate."""

    class Gated:
        capabilities = cls.capabilities
        kind = getattr(cls, "kind", "")

        def __getattr__(self, name: str) -> Any:
            return getattr(driver, name)

        async def start(self, name: str) -> Any:
            if gate.fenced:
                raise GuestStartError(f"refused: the host is self-fenced ({gate.reason})")
            starting.add(name)
            try:
                return await driver.start(name)
            finally:
                starting.discard(name)

        async def spawn(self, definition: Any) -> Any:
            if gate.fenced:
                raise GuestStartError(f"refused: the host is self-fenced ({gate.reason})")
            starting.add(definition.name)
            try:
                return await driver.spawn(definition)
            finally:
                starting.discard(definition.name)

        async def status(self, name: str) -> GuestStatus:
            if name in starting:
                # Not asked through the driver mid-start: the process driver takes a STARTING guest
                # without a process yet for dead and releases its namespace, vNICs and cgroup under
                # the launch (the agent asks every pass for guests it has no status of; failover
                # starts then failed and waited out a back-off whenever 2+ started on one host).
                return GuestStatus(name=name, state=GuestState.STARTING)
            return await driver.status(name)

        async def prepare_incoming(self, definition: Any) -> Any:
            if gate.fenced:
                raise GuestStartError(f"refused: the host is self-fenced ({gate.reason})")
            return await driver.prepare_incoming(definition)

    Gated.__name__ = f"Gated{cls.__name__}"
    return Gated()  # type: ignore[return-value]


class SelfFence:
    def __init__(self, store: Store, *, cluster: str, host: str, drivers: Mapping[str, Driver], gate: FenceGate,
                 heartbeats: AgentHeartbeats, lease: Any) -> None:
        self.store, self.cluster, self.host = store, cluster, host
        self.drivers, self.gate, self.heartbeats = drivers, gate, heartbeats
        self.lease = lease
        """Callable returning the agent's current lease id (None before it has one)."""
        self.started_at = time.monotonic()
        self.last_lease: float | None = None

    async def _check_lease(self) -> None:
        while True:
            lease = self.lease()
            # A cut store connection does not fail a call, it stalls it until the client's own
            # deadline (5 s for etcd). The check gets half the self-fence timeout, so an operator
            # reading the agent's log sees the store go silent while the lease is still running out.
            deadline = max(0.2, self.heartbeats.self_fence_timeout / 2)
            try:
                kv = await asyncio.wait_for(self.store.get(keys.host_alive(self.cluster, self.host)), deadline)
                if lease is not None and kv is not None and kv.lease == lease:
                    self.last_lease = time.monotonic()
            except StoreError as exc:
                log.warning("lease check: %s", exc)
            except TimeoutError:
                log.warning("lease check: the store did not answer within %.1f s", deadline)
            await asyncio.sleep(0.5)

    async def _stop_all(self) -> None:
        for driver in self.drivers.values():
            for name in await driver.list_guests():
                with contextlib.suppress(GuestNotFound):
                    await driver.stop(name, timeout=0.2)
                log.error("self-fence: stopped %s", name)

    async def _stop_running(self) -> None:
        for driver in self.drivers.values():
            for name in await driver.list_guests():
                with contextlib.suppress(GuestNotFound):
                    if (await driver.status(name)).state in (GuestState.RUNNING, GuestState.STARTING):
                        await driver.stop(name, timeout=0.2)
                        log.error("self-fence: stopped %s (it was running while fenced)", name)

    async def run(self) -> None:
        checker = vital(self._check_lease(), "selffence-lease")
        swept = 0.0
        try:
            while True:
                now = time.monotonic()
                decision = self_fence_decision(now, started_at=self.started_at, last_ack=self.heartbeats.last_ack(),
                                               last_lease=self.last_lease, timeout=self.heartbeats.self_fence_timeout,
                                               leader_since=self.heartbeats.leader_since)
                if decision.fence and not self.gate.fenced:
                    self.gate.fenced, self.gate.reason, self.gate.fenced_at = True, decision.reason, time.time()
                    self.gate.count += 1
                    log.error("SELF-FENCE: %s: stopping every guest", decision.reason)
                    await self._stop_all()
                    swept = now
                elif decision.fence and now - swept >= 0.5:
                    # Level-triggered while fenced: a start already in flight when the gate closed
                    # may finish after the first sweep; nothing may keep running here.
                    await self._stop_running()
                    swept = now
                elif not decision.fence and self.gate.fenced:
                    log.warning("self-fence lifted: lease and controller current again")
                    self.gate.fenced, self.gate.reason = False, ""
                await asyncio.sleep(0.1)
        finally:
            checker.cancel()


async def run_agent_ha(agent: Any, store: Store, gate: FenceGate, *, key_path: Path, drivers: Mapping[str, Driver]) -> None:
    """Heartbeats + self-fencing beside a running ``Agent`` (the agent's main loop starts this)."""
    heartbeats = AgentHeartbeats(
        store, cluster=agent.keys.cluster, host=agent.host, key=load_key(key_path),
        status=lambda: {n: s.state.value for n, s in getattr(agent, "_last_status", {}).items()},
        state=lambda: "self-fenced" if gate.fenced else "ready",
    )
    heartbeats.start()
    fence = SelfFence(store, cluster=agent.keys.cluster, host=agent.host, drivers=drivers, gate=gate,
                      heartbeats=heartbeats, lease=lambda: agent.lease)
    try:
        await fence.run()
    finally:
        await heartbeats.stop()
