"""A small spec for the `up` tests: 2 hosts with two NICs, process guests behind one balancer."""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml


def small_spec(replicas: int = 2, cluster: str | None = None, hosts: int = 2) -> dict:  # type: ignore[type-arg]
    return {
        "cluster": cluster or "u" + secrets.token_hex(2),
        "switches": ["sw0", "sw1"],
        "hosts": [{"name": f"h{i}", "cpus": 2, "memory": "2GiB", "disk": "10GiB",
                   "nics": [{"name": "eth0", "switch": "sw0"}, {"name": "eth1", "switch": "sw1"}]} for i in range(1, hosts + 1)],
        "networks": [{"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1",
                      "uplink": "eth0"}],
        "guests": [{"name": "api", "kind": "process", "replicas": replicas, "vcpus": 1, "memory": "64MiB",
                    "nics": [{"network": "prod"}], "port": 8080, "spread": "soft"}],
        "services": [{"name": "api", "listen": "127.0.0.1:0", "backends": {"group": "api", "port": 8080},
                      "health": {"type": "http", "path": "/health", "interval": "1s", "timeout": "1s",
                                 "rise": 1, "fall": 3}}],
        "policies": {"ha": {"host_failures_to_tolerate": 1, "heartbeat_interval": "100ms"}},
    }


def write_spec(path: Path, spec: dict) -> Path:  # type: ignore[type-arg]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
