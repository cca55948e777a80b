"""The phi-accrual failure detector (Hayashibara et al. 2004), one instance per host per link.

Role: from the arrival times of heartbeats, estimate how surprising the current silence
is: φ(Δt) = −log10(P(the next heartbeat arrives later than Δt)), with inter-arrival times
modelled as a normal distribution over a sliding window. φ = 1 means a 10 % chance we
are wrong to suspect, φ = 8 means 10⁻⁸. We use Akka's logistic approximation of the
normal tail (error < 0.1 % of the CDF, no erf needed) and its two safety margins:

- ``min_std_dev``: a floor on the standard deviation. A quiet network makes the measured
  deviation tiny and φ would then jump from 0 to ∞ a few ms after the mean — a
  hair-trigger. The floor keeps the slope sane.
- ``acceptable_pause``: added to the mean, so pauses up to that long (a GC, a scheduler
  hiccup under CPU saturation, a busy sender) never raise φ at all.

Defaults (interval 100 ms): mean 100 ms + pause 200 ms + floor 25 ms give φ = 8 about
430 ms after the last heartbeat of a steady stream — inside the ≤ 500 ms detection
target — while a gap of 3 intervals (300 ms) stays below φ = 1.

Must not: read a clock (``now`` is a parameter, seconds from any monotonic origin) or
know what a host or link is; that is liveness.py's job.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class PhiConfig:
    """Knobs of one detector; the defaults aim at ≤ 500 ms detection at a 100 ms interval."""

    threshold: float = 8.0
    """φ at which the link is considered down."""
    expected_interval: float = 0.1
    """Seeds the history so the first seconds are neither blind nor hair-triggered."""
    min_std_dev: float = 0.025
    acceptable_pause: float = 0.2
    window: int = 200
    """Inter-arrival samples kept (20 s at 100 ms)."""
    max_sample: float = 2.0
    """Longer gaps (a restarted agent) are never learned."""
    relearn_after: int = 3
    """A gap during which φ passed ``threshold`` was an outage (a cut cable, a paused
    link), not a sample: learning it would teach the detector that outages are normal
    and slow the next detection. Only after this many such gaps in a row is the new
    rhythm learned (the sender's interval really changed)."""

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.expected_interval <= 0 or self.min_std_dev <= 0:
            raise ValueError("threshold, expected_interval and min_std_dev must be positive")
        if self.acceptable_pause < 0 or self.window < 2:
            raise ValueError("acceptable_pause must be >= 0 and window >= 2")


def phi_of(elapsed: float, mean: float, std_dev: float) -> float:
    """φ for a silence of ``elapsed`` seconds under N(mean, std_dev) (logistic approximation)."""
    y = (elapsed - mean) / std_dev
    z = y * (1.5976 + 0.070566 * y * y)
    # Akka's -log10(e/(1+e)) with e = exp(-z) is softplus(z)/ln 10; written this way it
    # neither overflows for long silences nor underflows to log(0).
    softplus = z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))
    return softplus / math.log(10)


class PhiAccrualDetector:
    """Arrival history of one (host, link) and φ at any ``now``."""

    def __init__(self, config: PhiConfig | None = None) -> None:
        self.config = config or PhiConfig()
        self._intervals: deque[float] = deque(maxlen=self.config.window)
        self._sum = 0.0
        self._sum_sq = 0.0
        self.last_arrival: float | None = None
        self._outage_streak = 0
        # Seed with two samples around the expected interval (mean = interval, std = interval/4).
        spread = self.config.expected_interval / 4
        for sample in (self.config.expected_interval - spread, self.config.expected_interval + spread):
            self._add(sample)

    def _add(self, interval: float) -> None:
        if len(self._intervals) == self._intervals.maxlen:
            old = self._intervals[0]
            self._sum -= old
            self._sum_sq -= old * old
        self._intervals.append(interval)
        self._sum += interval
        self._sum_sq += interval * interval

    def heartbeat(self, now: float) -> None:
        """Record an arrival at ``now``. Arrivals out of order (``now`` earlier) are ignored."""
        if self.last_arrival is not None:
            interval = now - self.last_arrival
            if interval < 0:
                return
            outage = self.phi(now) >= self.config.threshold
            self._outage_streak = self._outage_streak + 1 if outage else 0
            if interval <= self.config.max_sample and (not outage or self._outage_streak >= self.config.relearn_after):
                self._add(interval)
        self.last_arrival = now

    @property
    def mean(self) -> float:
        return self._sum / len(self._intervals)

    @property
    def std_dev(self) -> float:
        n = len(self._intervals)
        variance = max(self._sum_sq / n - (self._sum / n) ** 2, 0.0)
        return max(math.sqrt(variance), self.config.min_std_dev)

    def phi(self, now: float) -> float:
        """φ at ``now``; 0.0 before the first heartbeat (the caller decides what silence
        since start means — liveness.py gives a start-up grace)."""
        if self.last_arrival is None:
            return 0.0
        elapsed = max(now - self.last_arrival, 0.0)
        return phi_of(elapsed, self.mean + self.config.acceptable_pause, self.std_dev)

    def is_available(self, now: float) -> bool:
        return self.phi(now) < self.config.threshold

    def silence_for_phi(self, phi: float) -> float:
        """Seconds after the last arrival at which φ reaches ``phi`` under the current history
        (bisection; for reporting the expected detection time)."""
        lo, hi = 0.0, 3600.0
        mean, std = self.mean + self.config.acceptable_pause, self.std_dev
        for _ in range(80):
            mid = (lo + hi) / 2
            if phi_of(mid, mean, std) < phi:
                lo = mid
            else:
                hi = mid
        return hi
