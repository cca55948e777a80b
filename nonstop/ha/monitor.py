"""The controller's heartbeat monitor: receiver + per-link phi detectors + liveness machines.

Role: glue, and the clock. It owns a ``HeartbeatReceiver``, feeds every accepted heartbeat
into ``ClusterLiveness`` and, every ``tick`` seconds, drains the sockets and evaluates
liveness, handing each ``Transition`` to ``on_transition``. It also keeps the latest
agent state and guests digest per host for the controller's reconcile loops.

Why drain before evaluating: if the controller's process was starved (CPU saturation),
datagrams may sit in the socket buffer while the timer that evaluates φ fires; reading
them first means a late *controller* is never mistaken for a silent *host*. Arrival
times are when we read, so a starved controller sees a burst of short intervals, which
only widens the detector's tolerance.

Must not: fence, move guests, or touch the store — the controller does that with the
transitions this emits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from nonstop.core.ha.heartbeat import Heartbeat, HeartbeatVerifier, Verdict
from nonstop.core.ha.liveness import ClusterLiveness, HostState, LivenessConfig, Transition
from nonstop.ha.heartbeat import HeartbeatReceiver
from nonstop.vital import vital


@dataclass(frozen=True)
class HostReport:
    """The last accepted heartbeat of a host (any link)."""

    agent_state: str
    guests_digest: bytes
    incarnation: int
    sequence: int
    received_at: float


class HeartbeatMonitor:
    """Start with ``await monitor.start()``; stop with ``await monitor.stop()``."""

    def __init__(
        self,
        cluster: str,
        key: bytes,
        links: Mapping[str, Iterable[str]],
        endpoints: list[tuple[str, int]],
        *,
        config: LivenessConfig | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        tick: float = 0.02,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        ack_as: str | None = "controller",
    ) -> None:
        self.clock = clock
        self.tick = tick
        self.liveness = ClusterLiveness(links, config, started_at=clock())
        self.verifier = HeartbeatVerifier(cluster, key, max_age=max_age)
        self.receiver = HeartbeatReceiver(self.verifier, endpoints, self._on_heartbeat, clock=clock, ack_as=ack_as)
        self.on_transition = on_transition
        self.reports: dict[str, HostReport] = {}
        self.transitions: list[Transition] = []
        self.unknown_senders = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def counters(self) -> dict[Verdict, int]:
        return self.verifier.counters

    def state(self, host: str) -> HostState:
        return self.liveness.state(host)

    def _on_heartbeat(self, heartbeat: Heartbeat, now: float) -> None:
        if not self.liveness.heartbeat(heartbeat.host, heartbeat.link, now):
            self.unknown_senders += 1
            return
        self.reports[heartbeat.host] = HostReport(
            heartbeat.agent_state, heartbeat.guests_digest, heartbeat.incarnation, heartbeat.sequence, now
        )

    def evaluate(self) -> list[Transition]:
        self.receiver.drain()
        transitions = self.liveness.evaluate(self.clock())
        for transition in transitions:
            self.transitions.append(transition)
            if self.on_transition is not None:
                self.on_transition(transition)
        return transitions

    def set_maintenance(self, host: str, enabled: bool, reason: str = "operator") -> Transition | None:
        transition = self.liveness.set_maintenance(host, enabled, self.clock(), reason)
        if transition is not None:
            self.transitions.append(transition)
            if self.on_transition is not None:
                self.on_transition(transition)
        return transition

    async def _run(self) -> None:
        while True:
            self.evaluate()
            await asyncio.sleep(self.tick)

    async def start(self) -> None:
        await self.receiver.start()
        self._task = vital(self._run(), "heartbeat-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.receiver.stop()
