"""The fallback fence: wait long enough that the host must have fenced itself.

Role: when no fence device answers (the BMC is on the same dead power feed, or the host is
partitioned from it too), the controller may still restart guests elsewhere — but only
after waiting out the host's self-fencing. An agent that has heard nothing from the
controller (or lost its store lease) for ``self_fence_timeout`` stops its guests itself
(like sbd's watchdog); waiting **twice** that long since the host was last heard leaves a
full timeout of margin for clocks and scheduling (sbd: msgwait = 2 × watchdog).

Must not: shorten the wait because the caller is in a hurry: if the deadline ends before
the wait does, it reports ``timeout`` and the caller tries again later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nonstop.fence.base import FenceAgent, FenceOutcome, FenceResult, FenceTarget, Stopwatch


class WatchdogWaitFence(FenceAgent):
    name = "watchdog-wait"
    verifies = False
    needs_device = False

    def __init__(self, self_fence_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if self_fence_timeout <= 0:
            raise ValueError("self_fence_timeout must be positive")
        self.self_fence_timeout = self_fence_timeout
        self.clock = clock

    def safe_at(self, target: FenceTarget, now: float) -> float:
        """When the host is known to have stopped its guests; an unknown last-heard counts from now."""
        heard = target.last_heard if target.last_heard is not None else now
        return heard + 2 * self.self_fence_timeout

    async def fence(self, target: FenceTarget, timeout: float) -> FenceResult:
        watch = Stopwatch()
        wait = self.safe_at(target, self.clock()) - self.clock()
        if wait > timeout:
            await asyncio.sleep(timeout)
            return FenceResult(target.host, self.name, FenceOutcome.TIMEOUT, watch.elapsed,
                               f"self-fence not yet certain: {wait - timeout:.1f}s more to wait")
        await asyncio.sleep(max(wait, 0.0))
        return FenceResult(target.host, self.name, FenceOutcome.ASSUMED_OFF, watch.elapsed,
                           f"waited 2 x self-fence timeout ({2 * self.self_fence_timeout:.1f}s) since last heard")
