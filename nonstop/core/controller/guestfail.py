"""Guest failures: restart in place (the agent's back-off) or move after N failures (pure).

Role: the agent restarts a failed guest on its own host with exponential back-off. The
controller watches the observed records: once a guest has failed ``max_restarts`` times on one
host (or the agent gave up), the host is presumably the problem, so the guest moves to another
host (the move excludes the failing host). Failures are counted per (guest, host) from the
observed ``attempts``.

Must not: read a clock, restart anything or write records.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GuestHealth:
    name: str
    host: str
    state: str | None
    attempts: int
    gave_up: bool
    reason: str | None = None


@dataclass(frozen=True)
class GuestVerdict:
    move: bool
    reason: str


def guest_verdict(health: GuestHealth, *, max_restarts: int) -> GuestVerdict:
    if health.state == "running":
        return GuestVerdict(False, "running")
    if health.gave_up:
        return GuestVerdict(True, f"the agent on {health.host} gave up: {health.reason or 'no reason given'}")
    if max_restarts > 0 and health.attempts >= max_restarts and health.state == "failed":
        return GuestVerdict(True, f"failed {health.attempts} times on {health.host} (max_restarts {max_restarts}): "
                                  f"{health.reason or 'no reason given'}")
    return GuestVerdict(False, f"restarting in place on {health.host} ({health.attempts} attempt(s))")
