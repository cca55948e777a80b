"""The renderer, snapshot-tested: spec -> netlink operations + nftables JSON, compared with
files under tests/net/snapshots/. After an intended change, regenerate them with
``NONSTOP_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/net/test_render_snapshots.py`` and
review the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nonstop.core.net.converge import converge
from nonstop.core.net.model import DesiredState, ObservedLink, ObservedState, op_to_dict
from nonstop.core.net.nftables import load_document
from nonstop.core.net.render import render_host_network, render_vnic, uplink_device
from nonstop.core.spec import ClusterSpec
from nonstop.specfile import load_spec

SNAPSHOTS = Path(__file__).parent / "snapshots"
EXAMPLE = Path(__file__).parents[2] / "examples" / "lab.yaml"


def _document(desired: DesiredState, uplinks: list[str]) -> dict[str, object]:
    empty = ObservedState(links=tuple(ObservedLink(u, "veth", None, "02:00:00:00:00:00", True) for u in uplinks))
    return {
        "ops_from_empty": [op_to_dict(op) for op in converge(desired, empty)],
        "nftables": {t.name: load_document(t, replace=True) for t in desired.tables},
    }


def _compare(name: str, document: dict[str, object]) -> None:
    path = SNAPSHOTS / f"{name}.json"
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if os.environ.get("NONSTOP_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing snapshot {path}; generate with NONSTOP_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"{name} changed; review and regenerate with NONSTOP_UPDATE_SNAPSHOTS=1"


@pytest.fixture(scope="module")
def example() -> ClusterSpec:
    return load_spec(EXAMPLE)


def test_example_host_network(example: ClusterSpec) -> None:
    host = example.host("host1")
    desired = render_host_network(example, host)
    _compare("example-host1", _document(desired, ["team0"]))
    assert uplink_device(example, host, "team0") == "nu-team0"


def test_nat_port_forwards_and_plain_nic_uplink() -> None:
    spec = ClusterSpec.model_validate({
        "cluster": "snap",
        "hosts": [{"name": "h1", "cpus": 1, "memory": "1GiB"}],
        "networks": [
            {"name": "nat0", "mode": "nat", "subnet": "198.19.20.0/24", "uplink": "eth1",
             "port_forwards": [{"host_port": 8080, "guest": "web-0", "guest_port": 80},
                               {"protocol": "udp", "host_port": 5353, "guest": "web-1", "guest_port": 53}]},
            {"name": "iso", "mode": "isolated", "subnet": "198.19.30.0/24"},
        ],
        "guests": [{"name": "web", "replicas": 2, "nics": [{"network": "nat0"}]}],
    })
    host = spec.host("h1")
    # web-1 has no address yet: its forward waits
    desired = render_host_network(spec, host, {"nat0": {"web-0": "198.19.20.2"}})
    _compare("nat-forwards", _document(desired, ["eth0", "eth1"]))
    assert uplink_device(spec, host, "eth1") == "eth1"


def test_vnics() -> None:
    tap = render_vnic("snap", "prod", "web-0", 0, "tap", bandwidth=100_000_000)
    veth = render_vnic("snap", "prod", "api-0", 0, "veth")
    _compare("vnics", {
        "tap": {"device": tap.device, "mac": tap.mac, **_document(tap.desired, [])},
        "veth": {"device": veth.device, "peer": veth.peer, "mac": veth.mac, **_document(veth.desired, [])},
    })
