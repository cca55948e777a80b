"""From a ClusterSpec to the engine's state: capacities, ratios, reserved, networks, guests."""

from __future__ import annotations

from typing import Any

import pytest

from nonstop.core.placement import HostCondition, Spread, cluster_state_from_spec, config_from_spec
from nonstop.core.spec import ClusterSpec

GIB = 1024**3


def spec(**overrides: Any) -> ClusterSpec:
    data: dict[str, Any] = {
        "cluster": "t",
        "hosts": [
            {"name": "a", "cpus": 4, "memory": "8GiB", "disk": "100GiB", "nics": ["eth0", "eth1"],
             "teams": [{"name": "team0", "members": ["eth0", "eth1"]}], "labels": {"rack": "r1"}},
            {"name": "b", "cpus": 2, "memory": "4GiB", "disk": "50GiB", "nics": ["eth0"]},
        ],
        "networks": [
            {"name": "prod", "subnet": "198.18.10.0/24", "uplink": "team0"},
            {"name": "nat0", "mode": "nat", "subnet": "198.19.20.0/24"},
        ],
        "guests": [
            {"name": "web", "replicas": 2, "vcpus": 2, "memory": "1GiB", "priority": 300, "spread": "hard",
             "disks": [{"size": "2GiB"}, {"name": "data", "size": "3GiB", "provisioning": "thick"}],
             "nics": [{"network": "prod"}], "labels": {"rack": "r1"}, "anti_affinity": ["api"]},
            {"name": "api", "replicas": 1, "affinity": ["web"]},
        ],
        "policies": {"allocation_ratios": {"cpu": 2.0, "memory": 1.5}, "reserved": {"cpus": 1, "memory": "512MiB"},
                     "ha": {"host_failures_to_tolerate": 1}},
    }
    data.update(overrides)
    return ClusterSpec.model_validate(data)


def test_effective_capacity_is_capacity_times_ratio_minus_reserved() -> None:
    state = cluster_state_from_spec(spec())
    assert state.host_names == ("a", "b")
    assert state.effective[0].tolist() == [4 * 2.0 - 1, 8 * GIB * 1.5 - 512 * 1024**2, 100 * GIB]
    assert state.effective[1].tolist() == [2 * 2.0 - 1, 4 * GIB * 1.5 - 512 * 1024**2, 50 * GIB]


def test_networks_follow_uplinks() -> None:
    state = cluster_state_from_spec(spec())
    assert state.hosts[0].networks == frozenset({"prod", "nat0"})
    assert state.hosts[1].networks == frozenset({"nat0"})  # b has no team0: prod is out of reach


def test_guests_are_named_per_replica_with_their_requests_and_constraints() -> None:
    state = cluster_state_from_spec(spec())
    assert state.guest_names == ("web-0", "web-1", "api-0")
    web = state.guests[0]
    assert web.request == (2.0, 1.0 * GIB, 5.0 * GIB)  # thin and thick disks both count in full
    assert (web.priority, web.spread, web.networks, dict(web.labels)) == (300, Spread.HARD, {"prod"}, {"rack": "r1"})
    api = state.guests[2]
    assert api.spread is Spread.SOFT and api.affinity == {"web"} and api.request[2] == 0.0
    assert state.group_anti[state.group_index["api"]] == (state.group_index["web"],)  # made symmetric


def test_host_states_and_assignments() -> None:
    state = cluster_state_from_spec(spec(), host_states={"b": "maintenance"}, assignments={"web-0": "a"})
    assert state.condition.tolist() == [HostCondition.UP, HostCondition.MAINTENANCE]
    assert state.placement_map() == {"web-0": "a"}
    assert state.used[0].tolist() == [2.0, 1.0 * GIB, 5.0 * GIB]
    with pytest.raises(ValueError, match="unknown guests: nope-0"):
        cluster_state_from_spec(spec(), assignments={"nope-0": "a"})
    with pytest.raises(ValueError, match="unknown host"):
        cluster_state_from_spec(spec(), host_states={"zz": HostCondition.FAILED})


@pytest.mark.parametrize(("on_degraded", "accept"), [("alert", True), ("no-new-guests", False), ("evacuate", False)])
def test_config_follows_policies(on_degraded: str, accept: bool) -> None:
    config = config_from_spec(spec(policies={"components": {"on_degraded": on_degraded}}))
    assert config.accept_degraded is accept
