"""The controller's own memory (pure): what it must not forget across passes or successors.

Role: facts that are not in any desired or observed record but steer decisions — where each
guest lived before a failover (its failback home), when each host failed (flap memory), since
when it is up again (the failback window), when it last got guests back, which hosts it knows
to be in maintenance, and which events it already reported (so a pass does not repeat them).
``decide`` takes one ``ControllerMemory`` and returns the next; the shell persists it
(``controller/memory``) whenever it changes, so a successor resumes failback windows exactly.

Must not: read a clock or the store; grow without bound (``trim`` keeps the last failures and
drops entries of hosts and guests the spec no longer has).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SCHEMA = 1
MAX_FAILURES = 32


def _frozen(m: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(sorted(m.items()))


@dataclass(frozen=True)
class ControllerMemory:
    homes: Mapping[str, str] = field(default_factory=dict)
    """guest → the host it ran on before a failover or evacuation (failback target)."""
    failures: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """host → wall-clock times it was declared dead (oldest first)."""
    up_since: Mapping[str, float] = field(default_factory=dict)
    """host → since when it is continuously up (kept while it is merely unheard)."""
    returned: Mapping[str, float] = field(default_factory=dict)
    """host → when it was last seen coming up (never cleared: tells a new outage from an old one)."""
    failback_done: Mapping[str, float] = field(default_factory=dict)
    maintenance: frozenset[str] = frozenset()
    reported: Mapping[str, str] = field(default_factory=dict)
    """topic → the last text reported for it (events are not repeated every pass)."""

    def with_changes(self, **changes: Any) -> ControllerMemory:
        values: dict[str, Any] = {k: _frozen(v) if isinstance(v, dict) else v for k, v in changes.items()}
        return replace(self, **values)

    def trim(self, hosts: Iterable[str], guests: Iterable[str]) -> ControllerMemory:
        hs, gs = set(hosts), set(guests)
        return ControllerMemory(
            homes={g: h for g, h in self.homes.items() if g in gs and h in hs},
            failures={h: t[-MAX_FAILURES:] for h, t in self.failures.items() if h in hs},
            up_since={h: t for h, t in self.up_since.items() if h in hs},
            returned={h: t for h, t in self.returned.items() if h in hs},
            failback_done={h: t for h, t in self.failback_done.items() if h in hs},
            maintenance=frozenset(h for h in self.maintenance if h in hs),
            reported={k: v for k, v in self.reported.items() if k.split(":", 1)[-1] in hs | gs},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "homes": dict(self.homes),
            "failures": {h: list(t) for h, t in self.failures.items()},
            "up_since": dict(self.up_since), "returned": dict(self.returned), "failback_done": dict(self.failback_done),
            "maintenance": sorted(self.maintenance), "reported": dict(self.reported),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControllerMemory:
        schema = data.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise ValueError(f"controller memory schema {schema} is not {SCHEMA}")
        return cls(
            homes={str(g): str(h) for g, h in data.get("homes", {}).items()},
            failures={str(h): tuple(float(x) for x in t) for h, t in data.get("failures", {}).items()},
            up_since={str(h): float(t) for h, t in data.get("up_since", {}).items()},
            returned={str(h): float(t) for h, t in data.get("returned", {}).items()},
            failback_done={str(h): float(t) for h, t in data.get("failback_done", {}).items()},
            maintenance=frozenset(str(h) for h in data.get("maintenance", [])),
            reported={str(k): str(v) for k, v in data.get("reported", {}).items()},
        )
