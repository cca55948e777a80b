"""The pure algorithms: fairness over many picks, LRU/MRU order, hash stability and remapping."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core.lb.algorithms import (
    ALGORITHMS,
    MAGLEV_TABLE_SIZE,
    ConsistentHash,
    LeastConnections,
    LeastRecentlyUsed,
    MostRecentlyUsed,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    SmoothWeightedRoundRobin,
    SourceHash,
    maglev_table,
    make_balancer,
)


@dataclass
class C:
    name: str
    weight: float = 1.0
    active: int = 0


def names(n: int) -> list[C]:
    return [C(f"s{i}") for i in range(n)]


def picks(balancer, cands, count, key_of=lambda i: b""):
    out = Counter()
    for i in range(count):
        out[cands[balancer.pick(cands, key_of(i))].name] += 1
    return out


def test_every_algorithm_returns_none_on_empty_and_is_registered():
    assert set(ALGORITHMS) == {
        "round-robin", "weighted-round-robin", "least-connections", "least-recently-used",
        "most-recently-used", "random", "power-of-two", "source-hash", "consistent-hash",
    }
    for name in ALGORITHMS:
        assert make_balancer(name).pick([], b"k") is None
    with pytest.raises(ValueError, match="unknown algorithm"):
        make_balancer("fastest")


def test_round_robin_cycles_in_order():
    cands = names(3)
    rr = RoundRobin()
    assert [cands[rr.pick(cands)].name for _ in range(6)] == ["s0", "s1", "s2", "s0", "s1", "s2"]


def test_smooth_weighted_round_robin_interleaves_like_nginx():
    cands = [C("a", 5), C("b", 1), C("c", 1)]
    swrr = SmoothWeightedRoundRobin()
    assert "".join(cands[swrr.pick(cands)].name for _ in range(7)) == "aabacaa"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=8))
def test_weighted_round_robin_is_exact_per_cycle(weights):
    cands = [C(f"s{i}", w) for i, w in enumerate(weights)]
    for balancer in (SmoothWeightedRoundRobin(), RoundRobin()):
        got = picks(balancer, cands, sum(weights) * 3)
        assert got == Counter({c.name: int(c.weight) * 3 for c in cands})


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5), min_size=2, max_size=6), st.integers(0, 2**31))
def test_random_and_p2c_are_weighted_fair_within_tolerance(weights, seed):
    cands = [C(f"s{i}", w) for i, w in enumerate(weights)]
    total = sum(weights)
    n = 6000
    got = picks(RandomChoice(random.Random(seed)), cands, n)
    for c in cands:
        expected = n * c.weight / total
        assert abs(got[c.name] - expected) < 6 * (expected ** 0.5) + 10


def test_least_connections_prefers_idle_then_spreads_ties():
    cands = [C("a", active=5), C("b", active=1), C("c", active=1, weight=2)]
    lc = LeastConnections()
    assert cands[lc.pick(cands)].name == "c"  # 1/2 < 1/1 < 5/1
    idle = names(3)
    assert set(picks(lc, idle, 3)) == {"s0", "s1", "s2"}


def test_power_of_two_never_picks_the_busiest_of_two():
    cands = [C("busy", active=100), C("idle", active=0)]
    p2c = PowerOfTwoChoices(random.Random(1))
    got = picks(p2c, cands, 500)
    # "busy" only wins when both draws are "busy" (~1/4)
    assert got["idle"] > 300


def test_least_recently_used_order():
    cands = names(4)
    lru = LeastRecentlyUsed()
    order = [cands[lru.pick(cands)].name for _ in range(4)]
    assert order == ["s0", "s1", "s2", "s3"]
    # s1 used again (the others were excluded): it becomes the most recently used
    only = [cands[1]]
    assert only[lru.pick(only)].name == "s1"
    assert [cands[lru.pick(cands)].name for _ in range(4)] == ["s0", "s2", "s3", "s1"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=60))
def test_lru_picks_the_one_idle_longest(subsets):
    cands = names(6)
    lru = LeastRecentlyUsed()
    last: dict[str, int] = {}
    for step, k in enumerate(subsets):
        offered = cands[: k + 1]
        name = offered[lru.pick(offered)].name
        assert last.get(name, -1) == min(last.get(c.name, -1) for c in offered)
        last[name] = step


def test_most_recently_used_sticks_until_excluded():
    cands = names(3)
    mru = MostRecentlyUsed()
    assert [cands[mru.pick(cands)].name for _ in range(3)] == ["s0", "s0", "s0"]
    rest = cands[1:]
    assert rest[mru.pick(rest)].name == "s1"
    assert cands[mru.pick(cands)].name == "s1"


def test_source_hash_is_stable_and_spreads():
    cands = names(4)
    sh = SourceHash()
    keys = [f"10.0.0.{i}".encode() for i in range(2000)]
    first = [sh.pick(cands, k) for k in keys]
    assert first == [sh.pick(cands, k) for k in keys]
    counts = Counter(first)
    assert all(350 < counts[i] < 650 for i in range(4))


@settings(max_examples=8, deadline=None)
@given(st.integers(min_value=3, max_value=24), st.data())
def test_consistent_hash_removing_one_of_n_remaps_at_most_1_2_over_n(n, data):
    cands = names(n)
    removed = data.draw(st.integers(0, n - 1))
    rest = cands[:removed] + cands[removed + 1 :]
    before = maglev_table([c.name for c in cands], MAGLEV_TABLE_SIZE)
    after = maglev_table([c.name for c in rest], MAGLEV_TABLE_SIZE)
    # the table IS the key space: key -> crc32(key) % size -> entry
    moved = sum(1 for b, a in zip(before, after, strict=True) if cands[b].name != rest[a].name)
    assert moved / MAGLEV_TABLE_SIZE <= 1.2 / n
    # and through the public interface: every key of the removed backend moved elsewhere
    ch = ConsistentHash()
    keys = [f"client-{i}".encode() for i in range(500)]
    assert all(rest[ch.pick(rest, k)].name != cands[removed].name for k in keys)


def test_consistent_hash_balances_and_honours_weight():
    cands = [C("a", 1), C("b", 1), C("c", 2)]
    ch = ConsistentHash()
    got = picks(ch, cands, 8000, key_of=lambda i: f"k{i}".encode())
    assert 1500 < got["a"] < 2500 and 1500 < got["b"] < 2500 and 3300 < got["c"] < 4700
