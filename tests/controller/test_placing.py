"""Placement decisions the controller makes, through the real placement engine (pure)."""

from __future__ import annotations

from nonstop.core.controller.placing import failover_moves, move_off, place_pending, rebalance_moves
from nonstop.core.spec import ClusterSpec


def spec(replicas: int = 3, memory: str = "1GiB", priority_db: int = 500) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "cluster": "c",
        "hosts": [{"name": f"h{i}", "cpus": 2, "memory": memory} for i in (1, 2, 3)],
        "guests": [{"name": "api", "replicas": replicas, "memory": "256MiB", "spread": "soft"},
                   {"name": "db", "replicas": 1, "memory": "256MiB", "priority": priority_db}],
        "policies": {"ha": {"host_failures_to_tolerate": 0}},
    })


def test_place_pending_skips_failed_and_maintenance_hosts() -> None:
    d = place_pending(spec(), {}, {"h1": "failed", "h2": "maintenance", "h3": "up"})
    assert {h for _, h in d.moves} == {"h3"}
    assert d.unplaced == ()


def test_failover_moves_by_priority_with_reasons() -> None:
    s = spec(memory="700MiB")
    assignments = {"api-0": "h1", "api-1": "h2", "api-2": "h3", "db-0": "h1"}
    d = failover_moves(s, assignments, {h: "up" for h in ("h1", "h2", "h3")}, ["h1"])
    moved = [g for g, _ in d.moves]
    assert moved[0] == "db-0"  # higher priority first
    assert all(h != "h1" for _, h in d.moves)
    assert set(moved) | {g for g, _ in d.unplaced} == {"api-0", "db-0"}


def test_unplaceable_guests_come_back_with_the_reason() -> None:
    s = spec(memory="300MiB")
    assignments = {"api-0": "h1", "api-1": "h2", "api-2": "h3", "db-0": "h1"}
    d = failover_moves(s, assignments, {h: "up" for h in ("h1", "h2", "h3")}, ["h1"])
    assert d.unplaced and all(reason for _, reason in d.unplaced)


def test_move_off_never_chooses_the_host_it_leaves() -> None:
    assignments = {"api-0": "h1", "api-1": "h2", "api-2": "h3", "db-0": "h1"}
    d = move_off(spec(), assignments, {h: "up" for h in ("h1", "h2", "h3")}, ["api-0", "db-0"], avoid="h1")
    assert len(d.moves) == 2 and all(h != "h1" for _, h in d.moves)


def test_rebalance_moves_toward_an_empty_returned_host() -> None:
    s = spec(replicas=4)
    s = s.model_copy(update={"policies": s.policies.model_copy(update={"spread_target": 0.02})})
    assignments = {"api-0": "h2", "api-1": "h2", "api-2": "h3", "api-3": "h3", "db-0": "h2"}
    d = rebalance_moves(s, assignments, {h: "up" for h in ("h1", "h2", "h3")})
    assert d.moves and all(h == "h1" for _, h in d.moves)
