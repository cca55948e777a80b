"""The scheduler: filters, then weighers, one guest at a time, in priority order.

Role: ``place`` decides a host for each pending guest; ``Engine`` is the loop the other
planners (failover, admission, rebalance) reuse. Every decision is "of the hosts that
pass every filter, the one with the highest weighted score; ties go to the lowest host
index", so equal input gives equal output.

Two paths compute that same decision:

- the *explaining* path evaluates every filter as a full host mask and every weigher on
  every host, and records which filter removed which hosts and every score; it is used
  for ``explain=`` guests, for unplaceable guests (to give the reason) and for small runs;
- the *cached* path keeps, per request class (identical request, networks, labels), the
  score of every host with the class-only filters folded in as −inf. Placing a guest
  changes one host, so only that host's column is recomputed (vectorized over classes).
  Group constraints (hard spread, anti-affinity, affinity, soft spread) touch a handful
  of hosts per guest and are applied as a sparse patch. Both paths evaluate the same
  elementwise expressions, so their scores are bit-identical (a test checks they agree).

Order: higher priority first, then guest name — except that a group others are affine
to is lifted to the priority of those dependents and placed just before them, so the
first of them sets the host the rest must join.

Must not: mutate the input ``ClusterState`` (a run works on a ``RunView`` copy), read
a clock, or do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nonstop.core.placement.explain import explain_decision
from nonstop.core.placement.filters import (
    AffinityFilter,
    AntiAffinityFilter,
    CapacityFilter,
    Filter,
    GroupFilter,
    HostFilter,
    HostStateFilter,
    default_filters,
)
from nonstop.core.placement.model import BoolArray, ClusterState, FloatArray, IntArray, Spread
from nonstop.core.placement.results import (
    Explanation,
    PlacementResult,
    Unplaced,
)
from nonstop.core.placement.view import RunView
from nonstop.core.placement.weighers import (
    DEFAULT_WEIGHTS,
    BalanceWeigher,
    GroupWeigher,
    HaReserveWeigher,
    PackWeigher,
    ResourceWeigher,
    SoftSpreadWeigher,
    SpreadWeigher,
    Weigher,
)

NEG_INF = float("-inf")
CACHE_LIMIT = 25_000_000
"""Most cached scores (classes × hosts) a run keeps; beyond it every guest takes the explaining path."""


@dataclass(frozen=True)
class SchedulerConfig:
    filters: tuple[Filter, ...]
    weighers: tuple[tuple[Weigher, float], ...]
    accept_degraded: bool = True

    @classmethod
    def default(
        cls,
        *,
        hosts: int = 0,
        failures: int = 1,
        weights: Mapping[str, float] | None = None,
        accept_degraded: bool = True,
    ) -> SchedulerConfig:
        """Nova-like defaults; ``weights`` overrides by weigher name (e.g. {"PackWeigher": 1})."""
        w = dict(DEFAULT_WEIGHTS)
        w.update(weights or {})
        weighers: tuple[tuple[Weigher, float], ...] = (
            (SpreadWeigher(), w["SpreadWeigher"]),
            (PackWeigher(), w["PackWeigher"]),
            (BalanceWeigher(), w["BalanceWeigher"]),
            (HaReserveWeigher(HaReserveWeigher.headroom_for(hosts, failures)), w["HaReserveWeigher"]),
            (SoftSpreadWeigher(), w["SoftSpreadWeigher"]),
        )
        return cls(default_filters(), weighers, accept_degraded)

    @classmethod
    def for_state(
        cls,
        state: ClusterState,
        failures: int = 1,
        *,
        weights: Mapping[str, float] | None = None,
        accept_degraded: bool = True,
    ) -> SchedulerConfig:
        """Defaults sized for ``state`` (the HA reserve weigher's F/N headroom)."""
        return cls.default(hosts=len(state.hosts), failures=failures, weights=weights,
                           accept_degraded=accept_degraded)


def placement_order(state: ClusterState, guests: IntArray) -> IntArray:
    """Guests in decision order: effective priority (desc), affinity depth, name."""
    if len(guests) == 0:
        return guests
    lift, depth = state.group_order_keys()
    groups = state.group[guests]
    priority = np.maximum(state.priority[guests], lift[groups])
    order = np.lexsort((state.name_rank[guests], depth[groups], -priority))
    result: IntArray = guests[order]
    return result


class Engine:
    """One placement run over a ``RunView``: decides, applies, explains."""

    def __init__(self, view: RunView, config: SchedulerConfig) -> None:
        self.view = view
        self.state = view.state
        self.config = config
        self.host_filters = [f for f in config.filters if isinstance(f, HostFilter)]
        self.capacity_columns = tuple(
            sorted({f.column for f in config.filters if isinstance(f, CapacityFilter)})
        )
        self.group_filters = [f for f in config.filters if isinstance(f, GroupFilter)]
        self.resource_weighers = [
            (w, float(x)) for w, x in config.weighers if isinstance(w, ResourceWeigher) and x != 0
        ]
        self.group_weighers = [(w, float(x)) for w, x in config.weighers if isinstance(w, GroupWeigher) and x != 0]
        self._group_default_terms = [
            weight * float(w.normalize(np.array(w.default_raw, dtype=np.float64)))
            for w, weight in self.group_weighers
        ]
        self._static: dict[int, BoolArray] = {}
        self._rows: dict[int, int] = {}
        self._cache: FloatArray | None = None
        self._cache_static: BoolArray | None = None
        self._cache_request: FloatArray | None = None
        self._saved_columns: dict[int, tuple[FloatArray | None, BoolArray | None, dict[int, bool]]] | None = None
        self._static_before: set[int] = set()
        # Batching is exact only for the group plugins whose effects it knows.
        self._batchable = all(
            isinstance(f, AffinityFilter | AntiAffinityFilter) for f in self.group_filters
        ) and all(isinstance(w, SoftSpreadWeigher) for w, _ in self.group_weighers)
        # Resource weighers add at most sum(|w|); a sibling costs the soft-spread weigher at least
        # half its weight (1 -> 1/2). When that half is larger, any feasible host without a
        # sibling beats every host with one, so siblings' hosts need no exact scoring.
        soft_weight = sum(w for g, w in self.group_weighers if isinstance(g, SoftSpreadWeigher))
        self._soft_dominates = (
            len(self.group_weighers) == 1 and sum(abs(w) for _, w in self.resource_weighers) < 0.5 * soft_weight
        )

    # ------------------------------------------------------------------ scoring

    def static_mask(self, klass: int) -> BoolArray:
        """AND of the host-only filters for one request class (cached for the run)."""
        mask = self._static.get(klass)
        if mask is None:
            mask = np.ones(len(self.state.hosts), dtype=np.bool_)
            for f in self.host_filters:
                mask = mask & f.class_mask(self.view, klass)
            self._static[klass] = mask
        return mask

    def evaluate(
        self,
        request: FloatArray,
        used: FloatArray,
        effective: FloatArray,
        inv_effective: FloatArray,
        ok: BoolArray,
        group_norms: Sequence[FloatArray] | None = None,
    ) -> FloatArray:
        """Weighted score (−inf where a class-level filter fails); shapes broadcast elementwise."""
        used_after = used + request
        if self.capacity_columns == (0, 1, 2):
            ok = ok & CapacityFilter.fits(used_after, effective).all(axis=-1)
        else:
            for c in self.capacity_columns:
                ok = ok & CapacityFilter.fits(used_after[..., c], effective[..., c])
        util = used_after * inv_effective
        total: FloatArray | float = 0.0
        for n, (w, weight) in enumerate(self.resource_weighers):
            # x * 1.0 and 0.0 + x are exact: skipping them changes no bit, only the op count.
            term = w.normalize(w.raw(util))
            if weight != 1.0:
                term = weight * term
            total = term if n == 0 else total + term
        for j, (_w, weight) in enumerate(self.group_weighers):
            if group_norms is None:
                total = total + self._group_default_terms[j]
            else:
                total = total + weight * group_norms[j]
        result: FloatArray = np.where(ok, total, NEG_INF)
        return result

    def group_norms(self, guest: int, hosts: IntArray | None) -> list[FloatArray]:
        """Normalized group-weigher scores at ``hosts`` (sorted, distinct; None = all hosts)."""
        norms = []
        size = len(self.state.hosts) if hosts is None else len(hosts)
        for w, _weight in self.group_weighers:
            raw = np.full(size, w.default_raw, dtype=np.float64)
            sparse_hosts, sparse_raw = w.sparse_raw(self.view, guest)
            if len(sparse_hosts):
                if hosts is None:
                    raw[sparse_hosts] = sparse_raw
                else:
                    pos = np.searchsorted(hosts, sparse_hosts)
                    hit = pos < size
                    hit[hit] = hosts[pos[hit]] == sparse_hosts[hit]
                    raw[pos[hit]] = sparse_raw[hit]
            norms.append(w.normalize(raw))
        return norms

    def _group_constraints(self, guest: int) -> tuple[IntArray | None, IntArray]:
        required: IntArray | None = None
        excluded = []
        for f in self.group_filters:
            r = f.required(self.view, guest)
            if r is not None:
                required = r if required is None else np.intersect1d(required, r, assume_unique=True)
            e = f.excluded(self.view, guest)
            if len(e):
                excluded.append(e)
        if not excluded:
            return required, np.zeros(0, dtype=np.intp)
        return required, excluded[0] if len(excluded) == 1 else np.concatenate(excluded)

    def _best_among(self, guest: int, hosts: IntArray) -> tuple[int, float]:
        """Exact score of ``guest`` on a few hosts (sorted, distinct); best host and its score."""
        if len(hosts) == 0:
            return -1, NEG_INF
        view = self.view
        klass = int(self.state.klass[guest])
        total = self.evaluate(
            self.state.class_request[klass],
            view.used[hosts],
            self.state.effective[hosts],
            view.inv_effective[hosts],
            self.static_mask(klass)[hosts],
            self.group_norms(guest, hosts),
        )
        i = int(np.argmax(total))
        return int(hosts[i]), float(total[i])

    # ---------------------------------------------------------------- deciding

    def decide_full(self, guest: int, allowed: BoolArray | None = None) -> int:
        """The decision by full evaluation over all hosts (no explanation kept).

        ``allowed`` narrows the hosts further (the rebalancer's "not above the target").
        """
        view = self.view
        klass = int(self.state.klass[guest])
        total = self.evaluate(
            self.state.class_request[klass],
            view.used,
            self.state.effective,
            view.inv_effective,
            self.static_mask(klass),
            self.group_norms(guest, None),
        )
        required, excluded = self._group_constraints(guest)
        if required is not None:
            allowed = np.zeros(len(total), dtype=np.bool_)
            allowed[required] = True
            total = np.where(allowed, total, NEG_INF)
        total[excluded] = NEG_INF
        if allowed is not None:
            total = np.where(allowed, total, NEG_INF)
        i = int(np.argmax(total))
        return i if total[i] > NEG_INF else -1

    def decide_cached(self, guest: int) -> int:
        """The same decision from the per-class score cache plus a sparse group patch."""
        assert self._cache is not None
        row = self._cache[self._rows[int(self.state.klass[guest])]]
        required, excluded = self._group_constraints(guest)
        if required is not None:
            candidates = np.setdiff1d(required, excluded, assume_unique=False) if len(excluded) else required
            host, score = self._best_among(guest, candidates)
            return host if score > NEG_INF else -1
        soft = [hosts for hosts, _raw in (w.sparse_raw(self.view, guest) for w, _ in self.group_weighers) if len(hosts)]
        if not soft and not len(excluded):
            i = int(row.argmax())
            return i if row[i] > NEG_INF else -1
        soft_hosts = np.unique(np.concatenate(soft)) if soft else np.zeros(0, dtype=np.intp)
        blocked = np.concatenate((excluded, soft_hosts))
        saved = row[blocked]
        row[blocked] = NEG_INF
        i = int(row.argmax())
        best = float(row[i])
        row[blocked] = saved
        if len(soft_hosts) and not (self._soft_dominates and best > NEG_INF):
            if len(excluded):
                soft_hosts = np.setdiff1d(soft_hosts, excluded)
            j, score = self._best_among(guest, soft_hosts)
            if j >= 0 and (score > best or (score == best and j < i)):
                i, best = j, score
        return i if best > NEG_INF else -1

    def explain(self, guest: int) -> tuple[int, Explanation]:
        """The decision by the explaining path, with every filter step and weigher score."""
        return explain_decision(self, guest)

    # -------------------------------------------------------------------- runs

    def prepare(self, classes: Iterable[int]) -> bool:
        """Build the score cache for ``classes`` now, if it fits the limit; True if built."""
        classes = set(classes)
        if classes and len(classes) * len(self.state.hosts) <= CACHE_LIMIT:
            self._build_cache(classes)
            return True
        return False

    def _build_cache(self, classes: Iterable[int]) -> None:
        view, state = self.view, self.state
        classes = sorted(set(classes))
        self._rows = {k: i for i, k in enumerate(classes)}
        self._cache_static = np.stack([self.static_mask(k) for k in classes])
        self._cache_request = state.class_request[classes]
        self._cache = np.stack([
            self.evaluate(state.class_request[k], view.used, state.effective, view.inv_effective,
                          self._cache_static[i])
            for i, k in enumerate(classes)
        ])

    # ---------------------------------------------------------- what-if runs

    def begin(self) -> None:
        """Record changes from here on (view, cached scores, static masks) for ``rollback``."""
        self.view.begin()
        self._saved_columns = {}
        self._static_before = set(self._static)

    def _save_column(self, host: int) -> None:
        saved = self._saved_columns
        if saved is None or host in saved:
            return
        cache = None if self._cache is None else self._cache[:, host].copy()
        static = None if self._cache_static is None else self._cache_static[:, host].copy()
        saved[host] = (cache, static, {k: bool(mask[host]) for k, mask in self._static.items()})

    def rollback(self) -> None:
        """Restore the state of ``begin`` exactly (saved values, not recomputed ones)."""
        assert self._saved_columns is not None, "rollback without begin"
        for host, (cache, static, masks) in self._saved_columns.items():
            if cache is not None and self._cache is not None:
                self._cache[:, host] = cache
            if static is not None and self._cache_static is not None:
                self._cache_static[:, host] = static
            for k, value in masks.items():
                self._static[k][host] = value
        for k in set(self._static) - self._static_before:
            del self._static[k]  # computed mid-run from changed conditions: stale now
        self._saved_columns = None
        self.view.rollback()

    def fail_hosts(self, hosts: IntArray, displaced: IntArray) -> None:
        """Fail ``hosts`` inside a what-if run, without recomputing any whole-cluster mask.

        Only valid with a HostStateFilter configured: a FAILED host then passes no filter
        chain, so its column is simply false / −inf for every class.
        """
        assert any(isinstance(f, HostStateFilter) for f in self.config.filters)
        for h in hosts.tolist():
            self._save_column(h)
            for mask in self._static.values():
                mask[h] = False
            if self._cache is not None:
                assert self._cache_static is not None
                self._cache_static[:, h] = False
                self._cache[:, h] = NEG_INF
        self.view.fail_hosts(hosts, displaced)

    def touch(self, hosts: int | IntArray) -> None:
        """Recompute every cached class's score on ``hosts`` after their usage changed."""
        if self._cache is None:
            return
        assert self._cache_static is not None and self._cache_request is not None
        if self._saved_columns is not None:
            for h in [hosts] if isinstance(hosts, int) else hosts.tolist():
                self._save_column(h)
        view = self.view
        if isinstance(hosts, int):
            self._cache[:, hosts] = self.evaluate(
                self._cache_request, view.used[hosts], self.state.effective[hosts],
                view.inv_effective[hosts], self._cache_static[:, hosts],
            )
            return
        self._cache[:, hosts] = self.evaluate(
            self._cache_request[:, None, :], view.used[hosts][None], self.state.effective[hosts][None],
            view.inv_effective[hosts][None], self._cache_static[:, hosts],
        )

    def _batch_length(self, order: list[int], start: int, explain: frozenset[int]) -> int:
        """How many guests from ``start`` on can be decided as one spread batch.

        Consecutive guests of one hard-spread group and one request class: placing one on
        host x changes only x's score, and x is then excluded for its siblings anyway, so
        sequential greedy equals "the n best distinct hosts" — decided with one cache update.
        Soft spread too, while the soft-spread weight dominates (``_soft_dominates``) and a
        host without a sibling is left: greedy then never picks a sibling's host either.
        """
        if not self._batchable or self._cache is None:
            return 1
        state = self.state
        first = order[start]
        group = int(state.group[first])
        spread = state.group_spread[group]
        spreads = spread is Spread.HARD or (spread is Spread.SOFT and self._soft_dominates)
        if not spreads or state.group_affinity[group] or first in explain:
            return 1
        klass = int(state.klass[first])
        end = start + 1
        while (end < len(order) and int(state.group[order[end]]) == group
               and int(state.klass[order[end]]) == klass and order[end] not in explain):
            end += 1
        return end - start

    def decide_batch(self, guests: list[int]) -> list[int]:
        """Hosts for a hard-spread batch (see ``_batch_length``); stops at the first that fails."""
        assert self._cache is not None
        row = self._cache[self._rows[int(self.state.klass[guests[0]])]]
        _required, excluded = self._group_constraints(guests[0])
        group = int(self.state.group[guests[0]])
        if self.state.group_spread[group] is Spread.SOFT:
            excluded = np.concatenate((excluded, self.view.occupancy.hosts(group)))
        saved = row[excluded]
        row[excluded] = NEG_INF
        chosen: list[int] = []
        chosen_scores: list[float] = []
        for _guest in guests:
            i = int(row.argmax())
            if row[i] == NEG_INF:
                break
            chosen.append(i)
            chosen_scores.append(float(row[i]))
            row[i] = NEG_INF
        row[chosen] = chosen_scores
        row[excluded] = saved
        return chosen

    def run(
        self,
        order: IntArray,
        *,
        explain: frozenset[int] = frozenset(),
        reasons: bool = True,
        stop_on_failure: bool = False,
        use_cache: bool | None = None,
    ) -> tuple[list[tuple[int, int]], list[tuple[int, str]], dict[str, Explanation]]:
        """Decide and apply each guest of ``order``; returns placed, unplaced, explanations."""
        classes = set(self.state.klass[order].tolist())
        if self._cache is not None and classes <= set(self._rows):
            pass  # a prepared engine (what-if runs): keep its cache
        else:
            if use_cache is None:
                use_cache = len(order) >= 4 * len(classes) and len(classes) * len(self.state.hosts) <= CACHE_LIMIT
            if use_cache and len(order):
                self._build_cache(classes)
        placed: list[tuple[int, int]] = []
        unplaced: list[tuple[int, str]] = []
        explanations: dict[str, Explanation] = {}
        guests = order.tolist()
        position = 0
        while position < len(guests):
            batch = self._batch_length(guests, position, explain)
            if batch > 1:
                hosts = self.decide_batch(guests[position : position + batch])
                batch_guests = guests[position : position + len(hosts)]
                self.view.assign_new(batch_guests, hosts)
                placed.extend(zip(batch_guests, hosts, strict=True))
                if hosts:
                    self.touch(np.array(hosts, dtype=np.intp))
                    position += len(hosts)
                    continue
            guest = guests[position]
            position += 1
            if guest in explain:
                host, explanation = self.explain(guest)
                explanations[explanation.guest] = explanation
            elif self._cache is not None:
                host = self.decide_cached(guest)
            else:
                host = self.decide_full(guest)
            if host < 0:
                reason = self.explain(guest)[1].reason if reasons else "no host passes the filters"
                unplaced.append((guest, reason))
                if stop_on_failure:
                    break
                continue
            self.view.assign(guest, host)
            self.touch(host)
            placed.append((guest, host))
        return placed, unplaced, explanations


def place(
    state: ClusterState,
    pending: Sequence[str] | None = None,
    config: SchedulerConfig | None = None,
    *,
    explain: Iterable[str] = (),
    use_cache: bool | None = None,
) -> PlacementResult:
    """Place ``pending`` guests (default: every guest without a host) in priority order."""
    config = config or SchedulerConfig.for_state(state)
    view = RunView.start(state, config.accept_degraded)
    if pending is None:
        guests = np.flatnonzero(state.assignment < 0).astype(np.intp)
    else:
        guests = np.array([state.guest_index[name] for name in pending], dtype=np.intp)
        for g in guests.tolist():
            if view.assignment[g] >= 0:
                view.assign(g, -1)
    engine = Engine(view, config)
    wanted = frozenset(state.guest_index[name] for name in explain if name in state.guest_index)
    placed, unplaced, explanations = engine.run(placement_order(state, guests), explain=wanted, use_cache=use_cache)
    return PlacementResult(
        state=state.with_assignment(view.assignment),
        placed=tuple((state.guest_names[g], state.host_names[h]) for g, h in placed),
        unplaced=tuple(Unplaced(state.guest_names[g], reason) for g, reason in unplaced),
        explanations=explanations,
    )
