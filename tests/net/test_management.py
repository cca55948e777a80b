"""The management addressing plan (nonstop/core/net/management.py): pure, no kernel."""

from __future__ import annotations

from nonstop.core.net import management as m
from nonstop.core.spec import ClusterSpec
from nonstop.lab import names


def _spec() -> ClusterSpec:
    """h1 teamed over eth0/eth1 (cabled to sw0/sw1), h2 with two plain NICs; one bridged network."""
    return ClusterSpec.model_validate({
        "cluster": "c",
        "hosts": [
            {"name": "h1", "cpus": 1, "memory": "1GiB",
             "teams": [{"name": "team0", "members": ["eth0", "eth1"], "primary": "eth0"}]},
            {"name": "h2", "cpus": 1, "memory": "1GiB"},
        ],
        "networks": [{"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24"}],
    })


def test_a_team_gets_the_host_address_on_every_switch_it_reaches() -> None:
    spec = _spec()
    h1 = spec.hosts[0]
    assert m.uplink_switches(spec, h1, "team0") == [0, 1]
    assert m.host_addresses(spec, h1) == [("nu-team0", "198.18.0.10/24"), ("nu-team0", "198.18.1.10/24")]


def test_plain_nics_each_claim_their_switch_on_their_own_device() -> None:
    spec = _spec()
    h2 = spec.hosts[1]
    # eth0 carries the bridged network (its addresses live on the uplink bridge); eth1 does not
    assert m.host_addresses(spec, h2) == [("nu-eth0", "198.18.0.11/24"), ("eth1", "198.18.1.11/24")]
    assert m.host_default_gateway(spec, h2) == m.switch_address(0, m.OUT_OCTET) == "198.18.0.254"


def test_every_switch_subnet_lies_in_the_management_range() -> None:
    for k in range(m.MAX_SWITCHES):
        assert m.switch_subnet(k).subnet_of(m.MANAGEMENT_RANGE)
        assert m.switch_address(k, m.CTL_OCTET) in {str(a) for a in m.switch_subnet(k).hosts()}


def test_the_lab_names_are_the_plan() -> None:
    assert names.host_addresses is m.host_addresses
    assert names.switch_address is m.switch_address
    assert names.OUT_OCTET == m.OUT_OCTET
