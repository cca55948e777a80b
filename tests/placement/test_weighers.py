"""Each weigher alone, table-driven: raw score from utilization, normalization to [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from nonstop.core.placement import ClusterState, Spread
from nonstop.core.placement.view import RunView
from nonstop.core.placement.weighers import (
    BalanceWeigher,
    HaReserveWeigher,
    PackWeigher,
    ResourceWeigher,
    SoftSpreadWeigher,
    SpreadWeigher,
)

from .builders import guest, host


@pytest.mark.parametrize(
    ("weigher", "util", "raw", "normalized"),
    [
        (SpreadWeigher(), (0.0, 0.0, 0.0), 1.0, 1.0),
        (SpreadWeigher(), (0.5, 0.25, 0.75), 0.5, 0.5),
        (SpreadWeigher(), (1.2, 1.2, 1.2), -0.2, 0.0),  # clipped
        (PackWeigher(), (0.5, 0.25, 0.75), 0.5, 0.5),
        (PackWeigher(), (0.9, 0.9, 0.9), 0.9, 0.9),
        (BalanceWeigher(), (0.2, 0.9, 0.1), 0.9, 0.1),  # dominant resource: memory
        (BalanceWeigher(), (0.3, 0.3, 0.3), 0.3, 0.7),
        (HaReserveWeigher(0.25), (0.5, 0.6, 0.1), 0.4, 1.0),  # 40 % free >= 25 % reserve
        (HaReserveWeigher(0.25), (0.5, 0.9, 0.1), 0.1, 0.4),  # 10 % of the 25 % wanted
        (HaReserveWeigher(0.25), (1.0, 0.2, 0.1), 0.0, 0.0),
    ],
)
def test_resource_weighers(weigher: ResourceWeigher, util: tuple[float, float, float], raw: float,
                           normalized: float) -> None:
    raw_score = weigher.raw(np.array([util]))
    assert raw_score[0] == pytest.approx(raw)
    assert weigher.normalize(raw_score)[0] == pytest.approx(normalized)


def test_resource_weighers_are_elementwise_over_any_shape() -> None:
    rng = np.random.default_rng(7)
    util = rng.random((4, 5, 3))
    for weigher in (SpreadWeigher(), PackWeigher(), BalanceWeigher(), HaReserveWeigher(0.1)):
        whole = weigher.normalize(weigher.raw(util))
        parts = np.array([[weigher.normalize(weigher.raw(util[i, j]))for j in range(5)] for i in range(4)])
        assert np.array_equal(whole, parts)  # bit-identical: the cache relies on it
        assert ((whole >= 0) & (whole <= 1)).all()


@pytest.mark.parametrize(("hosts", "failures", "headroom"), [(4, 1, 0.25), (10, 2, 0.2), (1, 1, 1.0), (5, 0, 0.0)])
def test_ha_headroom_for(hosts: int, failures: int, headroom: float) -> None:
    assert HaReserveWeigher.headroom_for(hosts, failures) == pytest.approx(headroom)


@pytest.mark.parametrize(
    ("spread", "expected_raw"),
    [
        (Spread.SOFT, {0: 2.0, 2: 1.0}),
        (Spread.HARD, {}),  # hard spread is the filter's job
        (Spread.NONE, {}),
    ],
)
def test_soft_spread_weigher(spread: Spread, expected_raw: dict[int, float]) -> None:
    hosts = [host(f"h{i}") for i in range(3)]
    guests = [guest("web-0", host="h0", spread=spread), guest("web-1", host="h0", spread=spread),
              guest("web-2", host="h2", spread=spread), guest("web-3", spread=spread), guest("db-0", host="h1")]
    state = ClusterState(hosts, guests)
    weigher = SoftSpreadWeigher()
    where, raw = weigher.sparse_raw(RunView.start(state), state.guest_index["web-3"])
    assert dict(zip(where.tolist(), raw.tolist(), strict=True)) == expected_raw
    assert weigher.normalize(np.array([0.0, 1.0, 3.0])).tolist() == [1.0, 0.5, 0.25]
