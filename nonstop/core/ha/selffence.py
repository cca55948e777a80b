"""Self-fencing: when an agent must stop its own guests (pure).

Role: the agent half of the no-two-instances guarantee. An agent that has not renewed its
lease in the store, or has heard nothing from the controller (no heartbeat
acknowledgement on any link), for ``timeout`` seconds must assume it has been declared
dead — and that the controller may soon start its guests elsewhere — so it stops them
itself, like sbd's watchdog. The controller, when no fence device answers, waits twice this
timeout since it last heard the host before restarting the guests (nonstop/fence/watchdog.py).

"Never heard" counts from the agent's start, so an agent that boots into a partition fences
too. The decision also says how long until it would fence, so the agent can sleep exactly
that long instead of polling.

A controller restart is not a partition: controller silence counts at most from when the agent
first saw the *current* leader (``leader_since``: a new leader record in the store — another
process, another lease — or none at all). Safe because a controller can restart guests
elsewhere only after fencing the host — by its BMC (a real power-off), or by waiting 2 × this
timeout since it last heard the host, which for a host it never heard counts from its own
start, i.e. after its leader record appeared. An agent that sees that record within
``timeout`` (it re-reads it every second) and still hears no acknowledgement fences itself
``timeout`` later: before that wait ends. Without this, every agent stopped every guest
whenever a controller restart took longer than the timeout.

Must not: read clocks or stop anything; the agent acts on the decision.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SelfFenceDecision:
    fence: bool
    reason: str
    due_in: float
    """Seconds until the decision would flip to ``fence`` if nothing is heard (0 when fencing)."""


def self_fence_decision(
    now: float, *, started_at: float, last_ack: float | None, last_lease: float | None, timeout: float,
    leader_since: float | None = None,
) -> SelfFenceDecision:
    """``last_ack``: when the controller last acknowledged a heartbeat; ``last_lease``: when
    the store lease was last renewed; ``leader_since``: when the agent first saw the current
    leader record (or last saw that there is none); all monotonic seconds, ``None`` if never."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    heard = last_ack if last_ack is not None else started_at
    if leader_since is not None:
        heard = max(heard, leader_since)
    controller_quiet = now - heard
    lease_quiet = now - (last_lease if last_lease is not None else started_at)
    if lease_quiet >= timeout:
        return SelfFenceDecision(True, f"store lease not renewed for {lease_quiet:.1f}s", 0.0)
    if controller_quiet >= timeout:
        return SelfFenceDecision(True, f"nothing heard from the controller for {controller_quiet:.1f}s", 0.0)
    return SelfFenceDecision(False, "lease and controller current", timeout - max(lease_quiet, controller_quiet))
