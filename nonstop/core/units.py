"""Human units for sizes, rates and durations.

Role: turn the strings people write in a cluster spec (``512MiB``, ``100Mbit``,
``200ms``) into plain integers and floats, and back into short strings for display.
Sizes are bytes (int), rates are bits per second (int), durations are seconds (float).

Must not: read files, look at a clock, or know anything about the spec's structure.
Errors are ``ValueError`` with a message that says what was expected, so the spec
loader can attach the file, line and field.
"""

from __future__ import annotations

import re

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}

_RATE_UNITS: dict[str, int] = {
    "bit": 1,
    "bps": 1,
    "kbit": 1000,
    "kbps": 1000,
    "mbit": 1000**2,
    "mbps": 1000**2,
    "gbit": 1000**3,
    "gbps": 1000**3,
}

_DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}

_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def _shown(value: object) -> str:
    """How a rejected input appears in a message: YAML's words for YAML's types."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return str(value)


def parse_size(value: object) -> int:
    """Bytes from ``512MiB``, ``2GiB``, ``10G`` or a bare integer of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 512MiB, got {_shown(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a non-negative size, got {value}")
        return value
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"expected a size like 512MiB, got {_shown(value)}")


def parse_rate(value: object) -> int:
    """Bits per second from ``100Mbit``, ``1Gbit``, ``500kbit`` or a bare integer."""
    if isinstance(value, bool):
        raise ValueError(f"expected a rate like 100Mbit, got {_shown(value)}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"expected a positive rate, got {value}")
        return value
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match and match.group(2).lower() in _RATE_UNITS:
            rate = int(float(match.group(1)) * _RATE_UNITS[match.group(2).lower()])
            if rate > 0:
                return rate
    raise ValueError(f"expected a rate like 100Mbit, got {_shown(value)}")


def parse_duration(value: object) -> float:
    """Seconds from ``200ms``, ``1.5s``, ``2m`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 200ms, got {_shown(value)}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value}")
        return float(value)
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match and match.group(2).lower() in _DURATION_UNITS:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    raise ValueError(f"expected a duration like 200ms, got {_shown(value)}")


def format_size(num_bytes: int | float) -> str:
    """``1536MiB`` style: the largest binary unit that keeps one decimal meaningful."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_rate(bits_per_second: int | float) -> str:
    value = float(bits_per_second)
    for unit in ("bit", "kbit", "Mbit", "Gbit"):
        if abs(value) < 1000 or unit == "Gbit":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    return f"{seconds / 60:.1f}".rstrip("0").rstrip(".") + "m"
