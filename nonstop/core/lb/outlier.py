"""Passive outlier detection with exponential back-off, and the slow-start weight ramp.

Role: two small pure policies the pool applies per backend.

- ``OutlierTracker`` counts consecutive failures seen by real traffic (connect errors,
  resets, 5xx). ``errors`` in a row eject the backend for ``base * 2**(k-1)`` seconds
  (k = ejections in a row, capped at ``max_ejection``); a success resets the error streak,
  and a backend that stays healthy for one ``max_ejection`` after its ejection ends gets
  its back-off level reset, so a flapping backend is ejected for longer and longer.
- ``slow_start_factor`` is the fraction of its weight a backend gets ``elapsed`` seconds
  after it came back: a linear ramp from 5 % to 100 % over ``slow_start`` seconds (like
  HAProxy's ``slowstart``), so a cold replica is not flooded.

Must not: read a clock (``now`` is a parameter) or do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    errors: int = 5
    """Consecutive failures that eject; 0 turns passive detection off."""
    base_ejection: float = 1.0
    max_ejection: float = 30.0


@dataclass(frozen=True, slots=True)
class Ejection:
    """Decision: take the backend out until ``until`` (the ``level``-th ejection in a row)."""

    until: float
    level: int


class OutlierTracker:
    __slots__ = ("policy", "streak", "level", "ejected_until")

    def __init__(self, policy: OutlierPolicy) -> None:
        self.policy = policy
        self.streak = 0
        self.level = 0
        self.ejected_until = 0.0

    def success(self, now: float) -> None:
        self.streak = 0
        if self.level and now >= self.ejected_until + self.policy.max_ejection:
            self.level = 0

    def failure(self, now: float) -> Ejection | None:
        """Count one failure; returns an Ejection when this one crosses the threshold."""
        p = self.policy
        if p.errors <= 0 or now < self.ejected_until:
            return None
        if self.level and now >= self.ejected_until + p.max_ejection:
            self.level = 0
        self.streak += 1
        if self.streak < p.errors:
            return None
        self.streak = 0
        self.level += 1
        duration = min(p.base_ejection * 2 ** (self.level - 1), p.max_ejection)
        self.ejected_until = now + duration
        return Ejection(until=self.ejected_until, level=self.level)


MIN_SLOW_START_FACTOR = 0.05


def slow_start_factor(elapsed: float, slow_start: float) -> float:
    """Weight multiplier ``elapsed`` seconds after recovery; 1.0 when slow start is off."""
    if slow_start <= 0 or elapsed >= slow_start:
        return 1.0
    if elapsed <= 0:
        return MIN_SLOW_START_FACTOR
    return max(MIN_SLOW_START_FACTOR, elapsed / slow_start)
