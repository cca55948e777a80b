"""The phi-accrual detector: tables, properties, and the detection-time budget."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core.ha.phi import PhiAccrualDetector, PhiConfig, phi_of


def steady(detector: PhiAccrualDetector, count: int = 100, interval: float = 0.1, start: float = 0.0) -> float:
    t = start
    for _ in range(count):
        t += interval
        detector.heartbeat(t)
    return t


def first_suspicion(detector: PhiAccrualDetector, last: float, step: float = 0.001) -> float:
    elapsed = 0.0
    while detector.is_available(last + elapsed):
        elapsed += step
        assert elapsed < 60, "never suspected"
    return elapsed


@pytest.mark.parametrize(
    ("elapsed", "mean", "std", "low", "high"),
    [
        (0.0, 0.1, 0.025, 0.0, 1e-3),  # right after a heartbeat: no doubt
        (0.1, 0.1, 0.025, 0.30, 0.31),  # at the mean: φ = log10(2)
        (0.2, 0.1, 0.025, 4.0, 6.0),  # four deviations past the mean: about 1e-5
        (1.0, 0.1, 0.025, 1e3, math.inf),  # long silence: huge, not an overflow
        (1e6, 0.1, 0.001, 1e3, math.inf),
    ],
)
def test_phi_table(elapsed: float, mean: float, std: float, low: float, high: float) -> None:
    assert low <= phi_of(elapsed, mean, std) <= high


def test_default_detection_at_100ms_interval_is_between_300_and_500ms() -> None:
    detector = PhiAccrualDetector(PhiConfig())
    last = steady(detector)
    delay = first_suspicion(detector, last)
    assert 0.3 <= delay <= 0.5, delay
    assert abs(detector.silence_for_phi(8.0) - delay) < 0.002


@settings(deadline=None)
@given(
    intervals=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=100),
    a=st.floats(0.0, 5.0),
    b=st.floats(0.0, 5.0),
)
def test_phi_is_monotone_in_elapsed_time(intervals: list[float], a: float, b: float) -> None:
    detector = PhiAccrualDetector()
    t = 0.0
    for interval in intervals:
        t += interval
        detector.heartbeat(t)
    lo, hi = sorted((a, b))
    assert detector.phi(t + lo) <= detector.phi(t + hi)


@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_no_false_suspicion_with_jitter_and_pauses_below_acceptable(seed: int) -> None:
    # Intervals jittered ±50 %, and every ~20th heartbeat a pause of up to 3 intervals
    # (300 ms, e.g. a starved sender): none of it may raise suspicion.
    rng = random.Random(seed)
    config = PhiConfig()
    detector = PhiAccrualDetector(config)
    t = 0.0
    detector.heartbeat(t)
    for _ in range(300):
        gap = 0.1 * rng.uniform(0.5, 1.5)
        if rng.random() < 0.05:
            gap = rng.uniform(0.1, 0.3)
        # check φ all along the gap, not just at its end
        for frac in (0.25, 0.5, 0.75, 1.0):
            assert detector.is_available(t + gap * frac), (t, gap)
        t += gap
        detector.heartbeat(t)


def test_jitter_widens_tolerance_but_silence_is_still_detected() -> None:
    rng = random.Random(7)
    detector = PhiAccrualDetector()
    t = 0.0
    for _ in range(200):
        t += 0.1 * rng.uniform(0.5, 1.5)
        detector.heartbeat(t)
    delay = first_suspicion(detector, t)
    assert 0.3 <= delay <= 0.7, delay


def test_long_gaps_are_not_learned() -> None:
    detector = PhiAccrualDetector()
    last = steady(detector)
    detector.heartbeat(last + 30.0)  # the link was down for 30 s
    t = steady(detector, 10, start=last + 30.0)
    assert first_suspicion(detector, t) <= 0.5


def test_before_first_heartbeat_phi_is_zero_and_out_of_order_is_ignored() -> None:
    detector = PhiAccrualDetector()
    assert detector.phi(100.0) == 0.0
    detector.heartbeat(10.0)
    detector.heartbeat(9.0)
    assert detector.last_arrival == 10.0


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0}, {"expected_interval": 0}, {"min_std_dev": 0}, {"acceptable_pause": -1}, {"window": 1}],
)
def test_bad_config_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PhiConfig(**kwargs)  # type: ignore[arg-type]


def test_an_outage_is_not_learned_but_a_new_rhythm_is() -> None:
    detector = PhiAccrualDetector()
    last = steady(detector)
    t = steady(detector, 10, start=last + 1.5)  # a 1.5 s outage, then the stream again
    assert first_suspicion(detector, t) <= 0.5
    # the sender now really beats every 1 s: after a few gaps the detector follows
    t = steady(detector, 30, interval=1.0, start=t)
    assert 1.0 < first_suspicion(detector, t) < 3.0


@settings(deadline=None)
@given(count=st.integers(10, 300), jitter=st.floats(0.0, 0.005), start=st.floats(0.0, 1e6))
def test_steady_stream_then_silence_is_suspected_between_300_and_500ms(count: int, jitter: float, start: float) -> None:
    detector = PhiAccrualDetector()
    t = start
    for i in range(count):
        t += 0.1 + (jitter if i % 2 else -jitter)
        detector.heartbeat(t)
    delay = detector.silence_for_phi(detector.config.threshold)
    assert 0.3 <= delay <= 0.5, delay
    assert detector.is_available(t + 0.3) and not detector.is_available(t + 0.5)
