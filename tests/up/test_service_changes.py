"""``service_changes``: what differs between the services a lab's balancers run and a new spec."""

from __future__ import annotations

import copy

from nonstop.core.spec import ClusterSpec
from nonstop.lab.services import ServiceChanges, balancer_config, service_changes

from .small_spec import small_spec


def _spec(doc: dict) -> ClusterSpec:  # type: ignore[type-arg]
    return ClusterSpec.model_validate(doc)


def test_same_services_is_no_change_even_when_guests_change() -> None:
    doc = small_spec(cluster="t1")
    other = copy.deepcopy(doc)
    other["guests"][0]["replicas"] = 5
    changes = service_changes(_spec(doc), _spec(other))
    assert changes == ServiceChanges() and not changes


def test_added_removed_and_changed_services_are_told_apart() -> None:
    doc = small_spec(cluster="t1")
    doc["services"].append({**doc["services"][0], "name": "old"})
    new = copy.deepcopy(doc)
    new["services"] = [{**doc["services"][0], "algorithm": "source-hash"}, {**doc["services"][0], "name": "fresh"}]
    changes = service_changes(_spec(doc), _spec(new))
    assert changes == ServiceChanges(added=("fresh",), removed=("old",), changed=("api",))
    assert changes.describe() == ["service fresh added", "service old removed", "service api changed"]


def test_balancer_config_keeps_the_service_settings_and_listens_inside_the_lab() -> None:
    spec = _spec({**small_spec(cluster="t1"), "services": [{**small_spec()["services"][0], "algorithm": "random",
                                                           "retries": 5}]})
    config = balancer_config(2, spec.services[0], [])
    svc = config["services"][0]
    assert svc["algorithm"] == "random" and svc["retries"] == 5
    assert svc["listen"] == "127.0.0.1:18002" and config["admin"].endswith(":19002")
    assert [s["name"] for s in svc["servers"]] == ["placeholder"]
    servers = [{"name": "api-0", "address": "198.18.10.5:8080", "weight": 1}]
    assert balancer_config(2, spec.services[0], servers)["services"][0]["servers"] == servers
