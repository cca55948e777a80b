"""HA admission control: does the cluster still fit every guest if any F hosts fail?

Role: ``admission`` answers for the current placement; ``admit`` refuses new guests that
would break the answer. The answer for a host set X is, by definition, whether
``plan_failover(state, X)`` places every displaced guest — the same greedy, the same
filters. Running that greedy for every host of a 10,000-host cluster would cost a whole
re-placement of the cluster, so most hosts are settled by a *proof* instead:

    A displaced guest g, k-th in failover order among the guests of X, is certainly
    placed if  (hosts feasible for g's class, outside X)  −  (an upper bound on hosts
    its group constraints exclude)  ≥  k + 1,
    because every earlier failover decision changes exactly one host, so it can make at
    most one more host infeasible for g (capacity, hard spread or anti-affinity).

If the proof holds for every guest of X, the greedy succeeds — no approximation. Hosts
where it does not hold (nearly full clusters, guests with affinity, custom group
filters) get the real greedy run (``failover_run``). F > 1: every combination up to
``combination_limit``, else the same proof with bounds over *any* F hosts — sound but
conservative, and the report says so (``exact`` is False).

Must not: read a clock, do I/O, or decide differently from ``plan_failover``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from nonstop.core.placement.engine import Engine, SchedulerConfig, place, placement_order
from nonstop.core.placement.failover import FailoverSimulator, failover_run
from nonstop.core.placement.filters import AffinityFilter, AntiAffinityFilter, GroupFilter
from nonstop.core.placement.model import (
    RESOURCES,
    BoolArray,
    ClusterState,
    FloatArray,
    Guest,
    HostCondition,
    Spread,
)
from nonstop.core.placement.results import AdmissionReport, AdmitDecision, Unplaced
from nonstop.core.placement.view import RunView

COMBINATION_LIMIT = 2000


class _Prover:
    """Per-guest slack for the proof: feasible hosts minus excluded hosts, before any failure."""

    def __init__(self, state: ClusterState, config: SchedulerConfig) -> None:
        self.state = state
        view = RunView.start(state, config.accept_degraded)
        engine = Engine(view, config)
        n_classes = len(state.classes)
        self.feasible = np.zeros((n_classes, len(state.hosts)), dtype=np.bool_)
        for k in range(n_classes):
            # Scores are −inf exactly where a class-level filter (state, network, label, capacity) fails.
            score = engine.evaluate(state.class_request[k], view.used, state.effective, view.inv_effective,
                                    engine.static_mask(k))
            self.feasible[k] = score > -np.inf
        counts = self.feasible.sum(axis=1)
        sizes = np.diff(state.group_offsets)
        excluded_bound = np.array(
            [sum(int(sizes[b]) for b in state.group_anti[a]) + (int(sizes[a]) if state.group_spread[a] is Spread.HARD
                                                                 else 0)
             for a in range(len(state.group_names))],
            dtype=np.int64,
        )
        provable_filters = all(
            isinstance(f, AffinityFilter | AntiAffinityFilter) or not isinstance(f, GroupFilter)
            for f in config.filters
        )
        bound_groups = np.array([bool(state.group_affinity[a]) for a in range(len(state.group_names))],
                                dtype=np.bool_)
        placed = np.flatnonzero(state.assignment >= 0)
        self.placed = placed
        self.order = placement_order(state, placed)
        klass = state.klass
        # slack[g] = feasible hosts for g (before removing failed ones) − excluded bound; −1 = unprovable.
        slack = counts[klass] - excluded_bound[state.group]
        if not provable_filters:
            slack[:] = -(10**9)
        slack[bound_groups[state.group]] = -(10**9)
        self.slack = slack
        # Rank of each placed guest among the guests of its own host, in failover order.
        hosts_in_order = state.assignment[self.order]
        by_host = np.argsort(hosts_in_order, kind="stable")
        sorted_hosts = hosts_in_order[by_host]
        starts = np.searchsorted(sorted_hosts, sorted_hosts, side="left")
        rank = np.empty(len(self.order), dtype=np.int64)
        rank[by_host] = np.arange(len(self.order)) - starts
        self.rank = np.zeros(len(state.guests), dtype=np.int64)
        self.rank[self.order] = rank

    def single_host_proven(self) -> BoolArray:
        """Boolean per host: the proof shows failing it alone leaves every guest placeable."""
        state = self.state
        n_hosts = len(state.hosts)
        g = self.placed
        host = state.assignment[g]
        need = self.rank[g] + 1
        have = self.slack[g] - self.feasible[state.klass[g], host]
        bad = np.zeros(n_hosts, dtype=np.bool_)
        bad[host[have < need]] = True
        proven: BoolArray = ~bad
        return proven

    def set_proven(self, hosts: Sequence[int]) -> bool:
        """The proof for one host set X: k counts the guests of X before g, in failover order."""
        state = self.state
        members = np.isin(state.assignment[self.order], hosts)
        g = self.order[members]
        if len(g) == 0:
            return True
        need = np.arange(1, len(g) + 1)
        have = self.slack[g] - self.feasible[state.klass[g]][:, list(hosts)].sum(axis=1)
        return bool(np.all(have >= need))

    def any_set_proven(self, failures: int) -> bool:
        """The proof for every X of size F at once: worst k, and F hosts lost from every count."""
        per_host = np.bincount(self.state.assignment[self.placed], minlength=len(self.state.hosts))
        worst_guests = int(np.sort(per_host)[::-1][:failures].sum())
        if worst_guests == 0:
            return True
        return bool(np.all(self.slack[self.placed] - failures >= worst_guests))


def _usable(state: ClusterState, config: SchedulerConfig) -> BoolArray:
    ok = state.condition == int(HostCondition.UP)
    if config.accept_degraded:
        ok = ok | (state.condition == int(HostCondition.DEGRADED))
    return np.asarray(ok, dtype=np.bool_)


def _headroom(state: ClusterState, usable: BoolArray, failed: Sequence[int]) -> FloatArray:
    """Per resource: free share of the surviving usable capacity once X's guests moved onto it."""
    survivors = usable.copy()
    survivors[list(failed)] = False
    capacity = state.effective[survivors].sum(axis=0)
    demand = state.used[usable].sum(axis=0) + state.used[[h for h in failed if not usable[h]]].sum(axis=0)
    result: FloatArray = np.where(capacity > 0, (capacity - demand) / np.maximum(capacity, 1e-9), -1.0)
    return result


def _headroom_single(state: ClusterState, usable: BoolArray) -> FloatArray:
    """``_headroom`` for every single host at once: (H, 3)."""
    total_capacity = state.effective[usable].sum(axis=0)
    total_demand = state.used[usable].sum(axis=0)
    capacity = total_capacity - state.effective * usable[:, None]
    demand = total_demand + state.used * (~usable)[:, None]
    result: FloatArray = np.where(capacity > 0, (capacity - demand) / np.maximum(capacity, 1e-9), -1.0)
    return result


def _as_dict(values: FloatArray) -> dict[str, float]:
    return {r: float(values[i]) for i, r in enumerate(RESOURCES)}


def admission(
    state: ClusterState,
    failures: int = 1,
    config: SchedulerConfig | None = None,
    *,
    combination_limit: int = COMBINATION_LIMIT,
    prove: bool = True,
) -> AdmissionReport:
    """Does every guest still fit if any ``failures`` hosts fail? Worst case, headroom, verdict.

    ``prove=False`` skips the proof and simulates every host set (for tests and benchmarks).
    """
    config = config or SchedulerConfig.for_state(state, failures=failures)
    usable = _usable(state, config)
    candidates = np.flatnonzero(state.condition != int(HostCondition.FAILED))
    if failures <= 0:
        return AdmissionReport(0, True, True, (), _as_dict(_headroom(state, usable, [])), "no host failure to tolerate")
    prover = _Prover(state, config)
    names = state.host_names

    simulator: FailoverSimulator | None = None

    def first_failure(sets: Sequence[Sequence[int]]) -> AdmissionReport | None:
        nonlocal simulator
        for hosts in sets:
            failed = np.array(hosts, dtype=np.intp)
            if simulator is None:
                simulator = FailoverSimulator(state, config)
            if simulator.unplaced(failed):
                _view, _placed, unplaced = failover_run(state, failed, config)
                who = ", ".join(names[h] for h in hosts)
                guest, why = unplaced[0]
                return AdmissionReport(
                    failures, False, True, tuple(names[h] for h in hosts),
                    _as_dict(_headroom(state, usable, list(hosts))),
                    f"if {who} fail{'s' if len(hosts) == 1 else ''}, {len(unplaced)} guest(s) cannot restart; "
                    f"first {state.guest_names[guest]}: {why}",
                    tuple(Unplaced(state.guest_names[g], r) for g, r in unplaced),
                )
        return None

    if failures == 1 and len(candidates):
        proven = prover.single_host_proven() if prove else np.zeros(len(state.hosts), dtype=np.bool_)
        to_check = [[h] for h in candidates.tolist() if not proven[h]]
        failure = first_failure(to_check)
        if failure is not None:
            return failure
        per_host = _headroom_single(state, usable)[candidates]
        worst = int(candidates[int(np.argmin(per_host.min(axis=1)))])
        return AdmissionReport(
            1, True, True, (names[worst],), _as_dict(_headroom(state, usable, [worst])),
            f"every single host failure can be absorbed (worst: {names[worst]}, "
            f"{len(to_check)} of {len(candidates)} hosts needed a full failover simulation)",
        )

    combinations = math.comb(len(candidates), failures)
    if combinations <= combination_limit:
        sets = [list(c) for c in itertools.combinations(candidates.tolist(), failures)]
        if not sets:  # fewer hosts than failures: all of them fail
            sets, combinations = [candidates.tolist()], 1
        failure = first_failure([s for s in sets if not (prove and prover.set_proven(s))])
        if failure is not None:
            return failure
        worst_set = min(sets, key=lambda s: float(_headroom(state, usable, s).min()))
        return AdmissionReport(
            failures, True, True, tuple(names[h] for h in worst_set), _as_dict(_headroom(state, usable, worst_set)),
            f"all {combinations} sets of {failures} host failures can be absorbed",
        )
    # Too many sets: a sound bound. Worst case = the F largest hosts by effective capacity.
    biggest = [int(h) for h in candidates[np.argsort(-state.effective[candidates].sum(axis=1))[:failures]]]
    headroom = _headroom(state, usable, biggest)
    if prover.any_set_proven(failures):
        return AdmissionReport(
            failures, True, False, tuple(names[h] for h in biggest), _as_dict(headroom),
            f"{combinations} host sets are too many to simulate; a conservative bound proves every set of "
            f"{failures} failures can be absorbed",
        )
    verdict = "aggregate capacity is short" if float(headroom.min()) < 0 else "the conservative bound cannot prove it"
    return AdmissionReport(
        failures, False, False, tuple(names[h] for h in biggest), _as_dict(headroom),
        f"{combinations} host sets are too many to simulate; treated as not tolerated: {verdict}",
    )


def admit(
    state: ClusterState,
    new_guests: Sequence[Guest],
    failures: int = 1,
    config: SchedulerConfig | None = None,
) -> AdmitDecision:
    """Place ``new_guests``; refuse (with the reason) if they do not fit or would break N+F."""
    hosts = [replace(h, condition=HostCondition(int(state.condition[i]))) for i, h in enumerate(state.hosts)]
    current = state.assignment.tolist()
    guests = [replace(g, host=state.host_names[current[i]] if current[i] >= 0 else None)
              for i, g in enumerate(state.guests)]
    combined = ClusterState(hosts, guests + [replace(g, host=None) for g in new_guests])
    config = config or SchedulerConfig.for_state(combined, failures=failures)
    result = place(combined, [g.name for g in new_guests], config)
    if result.unplaced:
        first = result.unplaced[0]
        return AdmitDecision(False, f"cannot place {first.guest}: {first.reason}", result, None)
    report = admission(result.state, failures, config)
    if not report.tolerates:
        return AdmitDecision(False, f"admitting would break tolerance of {failures} host failure(s): {report.reason}",
                             result, report)
    return AdmitDecision(True, f"placed; still tolerates {failures} host failure(s)", result, report)
