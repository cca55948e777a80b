"""The explaining path: one decision evaluated in full, with every filter step and score.

Role: ``explain_decision`` runs every configured filter as a full host mask, in order,
recording how many hosts each removed (exact count, names capped) and how many remain;
then scores every remaining host with every weigher and reports the chosen host and
the runners-up with each weigher's weight, raw and normalized score. It decides exactly
what the engine's cached path decides (the tests check it); the engine uses it for
``explain=`` guests and to say why a guest cannot be placed. It sees the engine as a
``Scorer`` (the parts it reads), so it does not import nonstop/core/placement/engine.py, which
imports it.

Must not: change the run's state — it only reads the engine's ``RunView``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nonstop.core.placement.filters import Filter
from nonstop.core.placement.model import BoolArray, ClusterState, FloatArray, IntArray
from nonstop.core.placement.results import MAX_NAMES, Explanation, FilterStep, HostScore, WeigherScore
from nonstop.core.placement.view import RunView
from nonstop.core.placement.weighers import GroupWeigher, ResourceWeigher, Weigher

RUNNERS_UP = 3
NEG_INF = float("-inf")


class ScorerConfig(Protocol):
    @property
    def filters(self) -> tuple[Filter, ...]: ...

    @property
    def weighers(self) -> tuple[tuple[Weigher, float], ...]: ...


class Scorer(Protocol):
    """What the explaining path reads of an ``engine.Engine``: its run, its configuration and
    its two scoring functions."""

    state: ClusterState
    view: RunView

    @property
    def config(self) -> ScorerConfig: ...

    def evaluate(self, request: FloatArray, used: FloatArray, effective: FloatArray, inv_effective: FloatArray,
                 ok: BoolArray, group_norms: Sequence[FloatArray] | None = None) -> FloatArray: ...

    def group_norms(self, guest: int, hosts: IntArray | None) -> list[FloatArray]: ...


def explain_decision(engine: Scorer, guest: int) -> tuple[int, Explanation]:
    """The host for ``guest`` (-1: none) and the full account of why."""
    state, view = engine.state, engine.view
    n = len(state.hosts)
    remaining = np.ones(n, dtype=np.bool_)
    steps = []
    for f in engine.config.filters:
        mask = f.host_mask(view, guest)
        removed = np.flatnonzero(remaining & ~mask)
        remaining &= mask
        names = tuple(state.host_names[h] for h in removed[:MAX_NAMES].tolist())
        steps.append(FilterStep(f.label, len(removed), names, int(remaining.sum())))
    klass = int(state.klass[guest])
    total = engine.evaluate(
        state.class_request[klass], view.used, state.effective, view.inv_effective,
        np.ones(n, dtype=np.bool_), engine.group_norms(guest, None),
    )
    total = np.where(remaining, total, NEG_INF)
    candidates = np.flatnonzero(remaining)
    ranked = candidates[np.lexsort((candidates, -total[candidates]))][: RUNNERS_UP + 1]
    scores = [host_score(engine, guest, int(h), float(total[h])) for h in ranked.tolist()]
    name = state.guest_names[guest]
    if not scores:
        return -1, Explanation(name, tuple(steps), None, (), unplaceable_reason(steps))
    reason = f"highest score {scores[0].total:.4f} of {len(candidates)} hosts that pass every filter"
    return int(ranked[0]), Explanation(name, tuple(steps), scores[0], tuple(scores[1:]), reason)


def host_score(engine: Scorer, guest: int, host: int, total: float) -> HostScore:
    """Every configured weigher's score of ``guest`` on ``host`` (zero-weight ones too)."""
    state, view = engine.state, engine.view
    util = (view.used[host] + state.request[guest]) * view.inv_effective[host]
    parts = []
    for w, weight in engine.config.weighers:
        if isinstance(w, ResourceWeigher):
            raw = w.raw(util)
        else:
            assert isinstance(w, GroupWeigher)
            raw = np.array(w.default_raw, dtype=np.float64)
            hosts, values = w.sparse_raw(view, guest)
            hit = np.flatnonzero(hosts == host)
            if len(hit):
                raw = np.array(values[hit[0]], dtype=np.float64)
        parts.append(WeigherScore(w.name, weight, float(raw), float(w.normalize(raw))))
    return HostScore(state.host_names[host], total, tuple(parts))


def unplaceable_reason(steps: Sequence[FilterStep]) -> str:
    """"no host passes the filters: F removed n (names); ..." from the filter steps."""
    removed = [s for s in steps if s.removed]
    if not removed:
        return "no hosts in the cluster"
    parts = []
    for s in removed:
        more = "" if s.removed <= len(s.removed_hosts) else f", +{s.removed - len(s.removed_hosts)} more"
        parts.append(f"{s.filter} removed {s.removed} ({', '.join(s.removed_hosts)}{more})")
    return "no host passes the filters: " + "; ".join(parts)
