"""Fence agents: the contract every plugin keeps, the result it reports, and the registry.

Role: before a dead host's guests start anywhere else, the controller must *know* the host
is off (or can no longer run them) — otherwise a host that was only unreachable could keep
running its guests while copies start elsewhere. A fence agent turns "make sure host X is
off" into a ``FenceResult`` that says, truthfully, whether that is now known.

Contract for every agent:

- ``fence(target, timeout)`` returns within ``timeout`` seconds (plus a small constant),
  never raises for a failure of the fence itself — BMC unreachable, wrong password, host
  refuses to turn off — and reports it as an outcome. A result with ``fenced=True`` is a
  promise: the host cannot run guests any more.
- ``status(target)`` reads the power state without changing it; ``None`` if unknown.
- Fencing an already-off host succeeds (idempotent): the caller may retry freely.
- Agents are small classes with capability flags; ``FENCE_AGENTS`` maps config names to
  classes. ``fence_in_order`` tries agents in the configured order until one fences.

Must not: decide *whether* to fence (the controller does) or restart anything.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum

from nonstop.core.spec import HostSpec


class FenceOutcome(str, Enum):
    VERIFIED_OFF = "verified-off"
    """The agent turned the host off (or found it off) and read back PowerState Off."""
    ASSUMED_OFF = "assumed-off"
    """No direct proof, but the waiting rule guarantees it (self-fencing by watchdog)."""
    TIMEOUT = "timeout"
    """The off state was not confirmed within the timeout."""
    UNREACHABLE = "unreachable"
    """The fence device (BMC) did not answer or refused our credentials."""
    ERROR = "error"
    """The device answered but refused or failed the operation."""


@dataclass(frozen=True)
class FenceTarget:
    """What a fence agent needs to know about one host."""

    host: str
    bmc_url: str | None = None
    """``http://127.0.0.1:PORT`` (Redfish); None for agents that need no device."""
    username: str = "admin"
    password: str = ""
    system_id: str | None = None
    """Redfish system Id; default: the host name, else the only system of the BMC."""
    last_heard: float | None = None
    """Monotonic time the host was last heard (for watchdog waiting)."""


def target_for(host: HostSpec, *, password: str, address: str | None = None, last_heard: float | None = None) -> FenceTarget:
    """The fence target of a host from its spec; ``address`` (``127.0.0.1:PORT``) overrides
    ``host.bmc.address`` (the lab learns its BMCs' ports at start-up)."""
    where = address or host.bmc.address
    url = None if where is None else (where if "://" in where else f"http://{where}")
    return FenceTarget(host.name, url, host.bmc.username, password, host.name, last_heard)


@dataclass(frozen=True)
class FenceResult:
    host: str
    agent: str
    outcome: FenceOutcome
    seconds: float
    detail: str = ""

    @property
    def fenced(self) -> bool:
        return self.outcome in (FenceOutcome.VERIFIED_OFF, FenceOutcome.ASSUMED_OFF)


class FenceAgent(ABC):
    """One way of making sure a host is off."""

    name: str = "abstract"
    verifies: bool = False
    """True when a success is read back from the hardware, not inferred."""
    needs_device: bool = True
    """True when the agent talks to a device (BMC, PDU) and can be unreachable."""

    @abstractmethod
    async def fence(self, target: FenceTarget, timeout: float) -> FenceResult:
        """Make sure ``target`` is off within ``timeout`` seconds; see the module contract."""

    async def status(self, target: FenceTarget) -> str | None:
        """The host's power state (``On``/``Off``/...) without changing it; None if unknown."""
        return None


async def fence_in_order(agents: list[FenceAgent], target: FenceTarget, timeout: float) -> list[FenceResult]:
    """Try ``agents`` in order until one fences; every attempt's result, last one decisive."""
    results = []
    for agent in agents:
        result = await agent.fence(target, timeout)
        results.append(result)
        if result.fenced:
            break
    return results


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self, timeout: float) -> float:
        return max(timeout - self.elapsed, 0.0)
