"""Fence agents: make sure a host is off before its guests start elsewhere.

``FENCE_AGENTS`` maps the names used in configuration to agent classes.
"""

from __future__ import annotations

from nonstop.fence.base import FenceAgent, FenceOutcome, FenceResult, FenceTarget, fence_in_order, target_for
from nonstop.fence.redfish import RedfishFence
from nonstop.fence.watchdog import WatchdogWaitFence

FENCE_AGENTS: dict[str, type[FenceAgent]] = {
    RedfishFence.name: RedfishFence,
    WatchdogWaitFence.name: WatchdogWaitFence,
}

__all__ = [
    "FENCE_AGENTS", "FenceAgent", "FenceOutcome", "FenceResult", "FenceTarget", "RedfishFence",
    "WatchdogWaitFence", "fence_in_order", "target_for",
]
