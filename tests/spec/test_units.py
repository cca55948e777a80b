"""Human units (pure core): table of accepted and rejected inputs, plus round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.units import (
    format_duration,
    format_rate,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("10G", 10 * 10**9),
        ("1.5KiB", 1536),
        (4096, 4096),
        ("7", 7),
        ("3 mib", 3 * 2**20),
        ("1TB", 10**12),
    ],
)
def test_sizes(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("100Mbit", 10**8), ("1Gbit", 10**9), ("500kbit", 5 * 10**5), ("2mbps", 2 * 10**6), (1000, 1000)],
)
def test_rates(text: object, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("200ms", 0.2), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), ("250us", 0.00025), (3, 3.0), (0.5, 0.5)],
)
def test_durations(text: object, value: float) -> None:
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("parse", "bad", "message"),
    [
        (parse_size, "lots", 'expected a size like 512MiB, got "lots"'),
        (parse_size, "5 parsecs", 'expected a size like 512MiB, got "5 parsecs"'),
        (parse_size, True, "expected a size like 512MiB, got true"),
        (parse_size, -1, "expected a non-negative size, got -1"),
        (parse_rate, "fast", 'expected a rate like 100Mbit, got "fast"'),
        (parse_rate, "100MiB", 'expected a rate like 100Mbit, got "100MiB"'),
        (parse_rate, 0, "expected a positive rate, got 0"),
        (parse_duration, "soon", 'expected a duration like 200ms, got "soon"'),
        (parse_duration, -2, "expected a non-negative duration, got -2"),
    ],
)
def test_rejections_say_what_was_expected(parse: object, bad: object, message: str) -> None:
    assert callable(parse)
    with pytest.raises(ValueError) as info:
        parse(bad)
    assert str(info.value) == message


@given(st.integers(min_value=0, max_value=2**50))
def test_size_format_round_trips_within_display_precision(n: int) -> None:
    back = parse_size(format_size(n))
    assert abs(back - n) <= max(0.05 * n, 1)


@given(st.integers(min_value=1, max_value=10**12))
def test_rate_format_round_trips_within_display_precision(n: int) -> None:
    assert abs(parse_rate(format_rate(n)) - n) <= max(0.05 * n, 1)


@given(st.floats(min_value=0.001, max_value=86400, allow_nan=False))
def test_duration_format_round_trips_within_display_precision(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=0.05, abs=0.001)
