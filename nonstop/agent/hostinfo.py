"""The host's physical use against what its guests were allocated: the overcommit signal.

Role: sample /proc/stat and /proc/meminfo (the machine's real CPU busy time and available memory),
and combine them with the guests' allocations (vCPUs, memory from their definitions) and actual
use (from driver status) into one record the agent writes to ``hosts/<host>/usage``. In the lab
every host shares this machine, so ``machine_*`` figures are machine-wide; ``guests_*`` figures
are this host's own.

Must not: write to the store (the agent does) or keep history beyond the previous sample.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from nonstop.core.guests.model import GuestDefinition, GuestState, GuestStatus


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies summed over all CPUs."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0.0)
    total = sum(parts[:8])
    return total - idle, total


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    return out


@dataclass
class UsageSampler:
    _last_cpu: tuple[float, float] | None = None
    _cpus: int = field(default_factory=lambda: os.cpu_count() or 1)

    def sample(self, desired: Iterable[GuestDefinition], statuses: Iterable[GuestStatus]) -> dict[str, object]:
        busy, total = _cpu_times()
        machine_cpu = None
        if self._last_cpu is not None and total > self._last_cpu[1]:
            machine_cpu = (busy - self._last_cpu[0]) / (total - self._last_cpu[1]) * self._cpus
        self._last_cpu = (busy, total)
        mem = _meminfo()
        running = [s for s in statuses if s.state is GuestState.RUNNING]
        desired_list = list(desired)
        return {
            "at": time.time(),
            "machine_cpus": self._cpus,
            "machine_cpu_used": round(machine_cpu, 3) if machine_cpu is not None else None,
            "machine_memory": mem.get("MemTotal"),
            "machine_memory_used": mem.get("MemTotal", 0) - mem.get("MemAvailable", 0),
            "guests_desired": len(desired_list),
            "guests_running": len(running),
            "guests_vcpus_allocated": sum(d.vcpus for d in desired_list),
            "guests_memory_allocated": sum(d.memory for d in desired_list),
            "guests_cpu_used": round(sum(s.cpu_usage or 0.0 for s in running), 3),
            "guests_memory_used": sum(s.memory_usage or 0 for s in running),
            "guests_throttled_seconds": round(sum(s.cpu_throttled_seconds or 0.0 for s in running), 3),
            "guests_oom_kills": sum(s.oom_kills for s in statuses),
        }
