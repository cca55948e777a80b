"""The small cluster the lab integration tests run: 3 hosts, two NICs each (one per switch,
so two heartbeat links), a bridged network on eth0, process guests behind a balancer."""

from __future__ import annotations

import secrets
from typing import Any

from nonstop.core.spec import ClusterSpec


def lab_spec(*, replicas: int = 3, failback: str = "manual", stability: float = 3.0, self_fence: float = 5.0,
             extra_groups: list[dict[str, Any]] | None = None, cluster: str | None = None) -> ClusterSpec:
    name = cluster or "t" + secrets.token_hex(2)
    hosts = [
        {"name": f"h{i}", "cpus": 2, "memory": "2GiB", "disk": "20GiB",
         "nics": [{"name": "eth0", "switch": "sw0"}, {"name": "eth1", "switch": "sw1"}]}
        for i in (1, 2, 3)
    ]
    groups: list[dict[str, Any]] = [
        {"name": "api", "kind": "process", "replicas": replicas, "vcpus": 1, "memory": "64MiB",
         "nics": [{"network": "prod"}], "port": 8080, "spread": "soft", "priority": 100},
        *(extra_groups or []),
    ]
    return ClusterSpec.model_validate({
        "cluster": name,
        "switches": ["sw0", "sw1"],
        "hosts": hosts,
        "networks": [{"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1",
                      "uplink": "eth0"}],
        "guests": groups,
        "services": [{"name": "api", "listen": "127.0.0.1:0", "backends": {"group": "api", "port": 8080},
                      # The controller keeps membership; the balancer's own checks are the second
                      # line, tolerant of a loaded machine (a 1 s check may take 0.5 s here).
                      "health": {"type": "http", "path": "/health", "interval": "1s", "timeout": "1s",
                                 "rise": 1, "fall": 3},
                      "connect_timeout": "500ms", "retries": 3}],
        "policies": {"ha": {"host_failures_to_tolerate": 1, "heartbeat_interval": "100ms",
                            "self_fence_timeout": self_fence, "failback": failback, "failback_stability": stability,
                            "max_restarts": 3}},
    })
