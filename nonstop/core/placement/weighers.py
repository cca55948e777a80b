"""Weighers: small plugins that score the hosts a guest may go to; the highest total wins.

Role: each weigher returns a raw score per host and normalizes it to [0, 1]; the engine
multiplies by the configured weight and sums (Nova's shape). Unlike Nova, which
min-max-normalizes over the hosts that passed the filters, every weigher here has a
*fixed* natural range (utilizations are fractions): a host's score then does not depend
on which other hosts happen to be candidates, tiny differences are not blown up to the
full [0, 1] range, and the engine can keep scores cached and update only the host that
changed. Two kinds:

- ``ResourceWeigher``: a function of the host's utilization per resource *after* the
  guest would be placed (``util``, shape (..., 3)); elementwise, any leading shape.
- ``GroupWeigher``: depends on other guests; raw score is ``default_raw`` on every host
  except a sparse set (``sparse_raw``).

Must not: filter (a weigher never makes a host impossible), or read outside ``RunView``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from nonstop.core.placement.model import FloatArray, IntArray, Spread
from nonstop.core.placement.view import RunView


class Weigher(ABC):
    name: ClassVar[str] = "Weigher"

    @abstractmethod
    def normalize(self, raw: FloatArray) -> FloatArray:
        """Map raw scores into [0, 1]; higher is better."""


class ResourceWeigher(Weigher):
    @abstractmethod
    def raw(self, util: FloatArray) -> FloatArray:
        """Raw score from utilization after placement, ``util[..., r]`` for r in cpu, memory, disk."""


def _mean_util(util: FloatArray) -> FloatArray:
    # Explicit column sums: bit-identical whatever the leading shape (cached vs explained path).
    mean: FloatArray = (util[..., 0] + util[..., 1] + util[..., 2]) / 3.0
    return mean


def _dominant_util(util: FloatArray) -> FloatArray:
    dominant: FloatArray = np.maximum(np.maximum(util[..., 0], util[..., 1]), util[..., 2])
    return dominant


def _clip01(values: FloatArray) -> FloatArray:
    # minimum/maximum ufuncs: same result as np.clip, without its Python-level overhead.
    clipped: FloatArray = np.minimum(np.maximum(values, 0.0), 1.0)
    return clipped


class SpreadWeigher(ResourceWeigher):
    """Prefer hosts left with the most free resources (mean free fraction after placement)."""

    name = "SpreadWeigher"

    def raw(self, util: FloatArray) -> FloatArray:
        return 1.0 - _mean_util(util)

    def normalize(self, raw: FloatArray) -> FloatArray:
        return _clip01(raw)


class PackWeigher(ResourceWeigher):
    """Prefer the fullest hosts (mean utilization after placement): frees whole hosts."""

    name = "PackWeigher"

    def raw(self, util: FloatArray) -> FloatArray:
        return _mean_util(util)

    def normalize(self, raw: FloatArray) -> FloatArray:
        return _clip01(raw)


class BalanceWeigher(ResourceWeigher):
    """Prefer the host whose dominant-resource utilization ends lowest (DRF-style evening out).

    Raw score is the dominant utilization after placement; normalized as 1 − raw, so
    the guest goes where its arrival leaves the scarcest resource least used.
    """

    name = "BalanceWeigher"

    def raw(self, util: FloatArray) -> FloatArray:
        return _dominant_util(util)

    def normalize(self, raw: FloatArray) -> FloatArray:
        return _clip01(1.0 - raw)


class HaReserveWeigher(ResourceWeigher):
    """Keep headroom for failover: a host scores 1 while its scarcest resource keeps
    ``headroom`` free after placement, and falls linearly to 0 as that reserve is eaten.

    With N hosts and F failures to tolerate, an evenly loaded cluster needs F/N of every
    host free (``headroom_for``).
    """

    name = "HaReserveWeigher"

    def __init__(self, headroom: float = 0.25) -> None:
        self.headroom = max(headroom, 1e-6)

    @staticmethod
    def headroom_for(hosts: int, failures: int) -> float:
        if hosts <= 0:
            return 1.0
        return min(1.0, max(failures, 0) / hosts)

    def raw(self, util: FloatArray) -> FloatArray:
        return 1.0 - _dominant_util(util)

    def normalize(self, raw: FloatArray) -> FloatArray:
        return _clip01(raw / self.headroom)


class GroupWeigher(Weigher):
    default_raw: float = 0.0

    @abstractmethod
    def sparse_raw(self, view: RunView, guest: int) -> tuple[IntArray, FloatArray]:
        """Hosts whose raw score differs from ``default_raw``, and their raw scores."""


class SoftSpreadWeigher(GroupWeigher):
    """Soft spread: penalize hosts already running siblings; raw = sibling count, score 1/(1+n)."""

    name = "SoftSpreadWeigher"
    default_raw = 0.0

    def sparse_raw(self, view: RunView, guest: int) -> tuple[IntArray, FloatArray]:
        group = int(view.state.group[guest])
        if view.state.group_spread[group] is not Spread.SOFT:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float64)
        hosts, counts = view.occupancy.counts(group)
        return hosts, counts.astype(np.float64)

    def normalize(self, raw: FloatArray) -> FloatArray:
        normalized: FloatArray = 1.0 / (1.0 + raw)
        return normalized


DEFAULT_WEIGHTS: dict[str, float] = {
    "SpreadWeigher": 1.0,
    "PackWeigher": 0.0,
    "BalanceWeigher": 1.0,
    "HaReserveWeigher": 1.0,
    "SoftSpreadWeigher": 10.0,
}
"""Soft spread outweighs every resource weigher together (max 3): siblings share a host only when no other fits."""
