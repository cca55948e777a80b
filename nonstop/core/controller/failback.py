"""Failback: when a returned host gets guests back, by policy, with hysteresis (pure).

Role: a host that failed and came back is eligible for failback only after it has been
continuously healthy for the stability window. Flapping lengthens the window: every failure
of the host within the last ``flap_memory`` doubles it (a host that failed 3 times in the
last 10 windows must stay up 4× as long), and with ``flap_limit`` failures in that memory it
gets nothing back until they age out — guests are never dragged back and forth.

Policies (``policies.ha.failback``):
- ``manual``: never move anything; the event log says the host is ready for failback.
- ``auto``: guests whose *home* is this host (where they ran before the failover) go back —
  VMs by live migration (``migrate_to``), process guests by a cold move (the balancer hides it).
- ``balanced``: only when the cluster's spread is off target (``plan_rebalance``); the caller
  supplies those moves.

Must not: read a clock or move anything; the controller applies ``FailbackDecision``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FailbackDecision:
    ready: bool
    """The host passed its stability window (and is not held for flapping)."""
    moves: tuple[tuple[str, str], ...]
    """(guest, host) to move now; empty when not ready or the policy says no."""
    reason: str
    wait: float = 0.0
    """Seconds until the window passes (0 when ready or held)."""


def required_window(stability: float, failures: Sequence[float], now: float, flap_memory_windows: float = 10.0) -> float:
    """The stability window, doubled per failure of the host in the last ``flap_memory_windows`` windows."""
    recent = [t for t in failures if now - t <= stability * flap_memory_windows]
    return float(stability * 2 ** max(len(recent) - 1, 0))


def failback_decision(
    *,
    host: str,
    policy: str,
    up_since: float | None,
    now: float,
    stability: float,
    failures: Sequence[float],
    homes: Mapping[str, str],
    assignments: Mapping[str, str],
    balanced_moves: Sequence[tuple[str, str]] = (),
    flap_limit: int = 4,
    flap_memory_windows: float = 10.0,
) -> FailbackDecision:
    """``homes``: guest → the host it ran on before a failover; ``assignments``: guest → current host."""
    if up_since is None:
        return FailbackDecision(False, (), f"host {host} is not up")
    recent = [t for t in failures if now - t <= stability * flap_memory_windows]
    if len(recent) >= flap_limit:
        return FailbackDecision(False, (), f"host {host} failed {len(recent)} times recently: flapping, held until "
                                         f"those failures are {stability * flap_memory_windows:.0f}s old")
    window = required_window(stability, failures, now, flap_memory_windows)
    healthy_for = now - up_since
    if healthy_for < window:
        return FailbackDecision(False, (), f"host {host} healthy for {healthy_for:.1f}s of {window:.1f}s", window - healthy_for)
    away = tuple(sorted((g, host) for g, home in homes.items() if home == host and assignments.get(g) not in (None, host)))
    if policy == "manual":
        note = f"{len(away)} guest(s) could return" if away else "nothing to move back"
        return FailbackDecision(True, (), f"host {host} stable; failback is manual: {note}")
    if policy == "auto":
        return FailbackDecision(True, away, f"host {host} stable for {healthy_for:.1f}s: moving {len(away)} guest(s) home")
    if policy == "balanced":
        moves = tuple(balanced_moves)
        why = "rebalancing" if moves else "spread within target: nothing to move"
        return FailbackDecision(True, moves, f"host {host} stable for {healthy_for:.1f}s: {why}")
    raise ValueError(f"unknown failback policy {policy!r}")
