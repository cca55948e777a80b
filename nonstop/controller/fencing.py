"""Running fences for the controller: one background task per (failover, attempt).

Role: ``decide`` asks for ``Fence(op_id, host, attempt)`` on every pass while a failover is in
its ``fencing`` step; ``FenceRunner.ensure`` starts a task for that attempt unless one runs or
has finished, and the task's ``FenceOutcome`` is handed back to the next ``decide`` through
``results``. The fence itself: Redfish through sushy (ForceOff, verify Off, bounded by the fence
timeout) when the host has a BMC; when none answers, ``WatchdogWaitFence`` — wait until twice
the self-fence timeout has passed since the host was last heard (its agent has stopped its
guests by then).

Must not: decide whether to fence or what happens after (``decide`` does); write the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from nonstop.core.controller.view import FenceOutcome
from nonstop.core.spec import ClusterSpec
from nonstop.fence import RedfishFence, WatchdogWaitFence, target_for
from nonstop.fence.base import FenceResult

log = logging.getLogger("nonstop.controller.fencing")


class FenceRunner:
    def __init__(self, *, bmcs: dict[str, str], password_file: Path | None, timeout: float,
                 last_heard: Callable[[str], float | None], wake: Callable[[], None],
                 report: Callable[[str, str, str, dict[str, object]], Awaitable[object]]) -> None:
        self.bmcs = dict(bmcs)
        self.password_file = password_file
        self.timeout = timeout
        self.last_heard = last_heard
        self.wake = wake
        self.report = report
        """``report(kind, subject, reason, data)``: the event log (a failed BMC attempt is news)."""
        self.results: dict[str, FenceOutcome] = {}
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}

    def password(self, spec: ClusterSpec, host: str) -> str:
        spec_path = spec.host(host).bmc.password_file
        for candidate in (self.password_file, Path(spec_path) if spec_path else None):
            if candidate is not None and candidate.exists():
                return candidate.read_text().strip()
        return "password"

    def ensure(self, spec: ClusterSpec, op_id: str, host: str, attempt: int) -> None:
        token = (op_id, attempt)
        done = self.results.get(op_id)
        if token in self._tasks or (done is not None and done.attempt == attempt):
            return
        self._tasks[token] = asyncio.create_task(self._run(spec, op_id, host, attempt), name=f"fence-{op_id}-{attempt}")

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _run(self, spec: ClusterSpec, op_id: str, host: str, attempt: int) -> None:
        try:
            result = await self.fence(spec, host)
            self.results[op_id] = FenceOutcome(attempt, result.fenced, result.agent, result.outcome.value,
                                               result.detail, result.seconds)
        except Exception as exc:  # a crashed attempt is a failed one: decide retries with back-off
            log.exception("fence of %s crashed", host)
            self.results[op_id] = FenceOutcome(attempt, False, "controller", "error", repr(exc), 0.0)
        finally:
            self._tasks.pop((op_id, attempt), None)
            self.wake()

    async def fence(self, spec: ClusterSpec, host: str) -> FenceResult:
        host_spec = spec.host(host)
        address = self.bmcs.get(host) or host_spec.bmc.address
        last_heard = self.last_heard(host)  # the monitor's monotonic clock, as WatchdogWaitFence expects
        result: FenceResult | None = None
        if address:
            target = target_for(host_spec, password=self.password(spec, host), address=address, last_heard=last_heard)
            result = await RedfishFence().fence(target, self.timeout)
            if result.fenced:
                return result
            await self.report("fence-attempt", host, f"{result.agent}: {result.outcome.value}: {result.detail}",
                              {"seconds": round(result.seconds, 3)})
        sft = spec.policies.ha.self_fence_timeout
        target = target_for(host_spec, password="", address=None, last_heard=last_heard)
        wait = await WatchdogWaitFence(sft).fence(target, 2 * sft + 1.0)
        if result is not None and not wait.fenced:
            return result
        return wait
