"""Backend lists from healthy replicas and the balancer diff (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.controller.backends import Backend, GuestFacts, desired_backends, lb_changes, serving
from nonstop.core.controller.guestfail import GuestHealth, guest_verdict
from nonstop.core.spec import ClusterSpec

SPEC = ClusterSpec.model_validate({
    "cluster": "c", "hosts": [{"name": "h1", "cpus": 2, "memory": "1GiB"}, {"name": "h2", "cpus": 2, "memory": "1GiB"}],
    "guests": [{"name": "api", "replicas": 3, "port": 8080}],
    "services": [{"name": "api", "backends": {"group": "api"}, "servers": [{"name": "static", "address": "10.0.0.9:80"}]}],
})


def facts(name: str, host: str = "h1", state: str = "running", obs_host: str | None = "h1", epoch: int = 2,
          obs_epoch: int | None = 2, address: str | None = "198.18.10.5") -> GuestFacts:
    return GuestFacts(name, "api", host, epoch, address, obs_host, state, obs_epoch)


@pytest.mark.parametrize(
    ("f", "host_state", "ok"),
    [
        (facts("a"), "up", True),
        (facts("a"), "link-degraded", True),
        (facts("a"), "maintenance", True),
        (facts("a"), "suspect", False),
        (facts("a"), "dead", False),
        (facts("a", state="failed"), "up", False),
        (facts("a", obs_host="h2"), "up", False),  # still on the old host after a move
        (facts("a", obs_epoch=1), "up", False),  # a stale copy
        (facts("a", address=None), "up", False),
    ],
)
def test_serving(f: GuestFacts, host_state: str, ok: bool) -> None:
    assert serving(f, {"h1": host_state}) is ok


def test_desired_backends_include_static_servers_and_serving_replicas() -> None:
    guests = {"api-0": facts("api-0"), "api-1": facts("api-1", host="h2", obs_host="h2"), "api-2": facts("api-2", state="stopped")}
    want = desired_backends(SPEC, SPEC.services[0], guests, {"h1": "up", "h2": "dead"})
    assert want == (Backend("api-0", "198.18.10.5:8080"), Backend("static", "10.0.0.9:80"))


def test_lb_changes() -> None:
    want = (Backend("a", "1.1.1.1:80"), Backend("b", "1.1.1.2:80"), Backend("c", "1.1.1.3:80"))
    changes = lb_changes(want, {"a": "1.1.1.1:80", "b": "9.9.9.9:80", "x": "1.1.1.4:80"})
    assert [b.name for b in changes.add] == ["c"]
    assert changes.remove == ("x",)
    assert [b.name for b in changes.readdress] == ["b"]
    assert lb_changes(want, {b.name: b.address for b in want}).empty


names = st.sampled_from(["a", "b", "c", "d", "e"])


@given(st.dictionaries(names, st.sampled_from(["1:1", "2:2"])), st.dictionaries(names, st.sampled_from(["1:1", "2:2"])))
def test_applying_the_changes_reaches_the_wanted_set(want_map: dict[str, str], have: dict[str, str]) -> None:
    want = tuple(Backend(n, a) for n, a in sorted(want_map.items()))
    changes = lb_changes(want, have)
    after = dict(have)
    for name in changes.remove:
        del after[name]
    for b in (*changes.add, *changes.readdress):
        after[b.name] = b.address
    assert after == want_map


@pytest.mark.parametrize(
    ("health", "move"),
    [
        (GuestHealth("g", "h1", "running", 7, False), False),
        (GuestHealth("g", "h1", "failed", 1, False), False),
        (GuestHealth("g", "h1", "failed", 3, False), True),
        (GuestHealth("g", "h1", "pending", 3, False), False),
        (GuestHealth("g", "h1", "failed", 0, True, "bad image"), True),
    ],
)
def test_guest_verdict(health: GuestHealth, move: bool) -> None:
    assert guest_verdict(health, max_restarts=3).move is move
