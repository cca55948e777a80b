"""``check_references`` (pure core): each cross-reference rule, table-driven on models, no files."""

from __future__ import annotations

from typing import Any

import pytest

from nonstop.core.spec import ClusterSpec
from nonstop.core.spec_refs import check_references

BASE: dict[str, Any] = {
    "cluster": "lab",
    "hosts": [
        {"name": "host1", "cpus": 2, "memory": "4GiB", "teams": [{"name": "team0", "members": ["eth0", "eth1"]}]},
        {"name": "host2", "cpus": 2, "memory": "4GiB", "teams": [{"name": "team0", "members": ["eth0", "eth1"]}]},
    ],
    "networks": [{"name": "prod", "subnet": "198.18.10.0/24", "uplink": "team0"}],
    "guests": [{"name": "web", "replicas": 2, "nics": [{"network": "prod"}]}],
    "services": [{"name": "web", "listen": "127.0.0.1:8080", "backends": {"group": "web"}}],
}


def with_changes(**sections: Any) -> ClusterSpec:
    return ClusterSpec.model_validate({**BASE, **sections})


def test_base_is_clean() -> None:
    assert check_references(with_changes()) == []


CASES: list[tuple[str, dict[str, Any], list[tuple[tuple[str | int, ...], str]]]] = [
    (
        "overlapping subnets",
        {"networks": [*BASE["networks"], {"name": "other", "subnet": "198.18.10.128/25"}]},
        [
            (
                ("networks", 1, "subnet"),
                "subnet 198.18.10.128/25 overlaps network prod (198.18.10.0/24); expected subnets that do not overlap",
            )
        ],
    ),
    (
        "gateway outside subnet",
        {"networks": [{"name": "prod", "subnet": "198.18.10.0/24", "gateway": "198.18.11.1"}]},
        [(("networks", 0, "gateway"), "gateway 198.18.11.1 is outside 198.18.10.0/24; expected an address inside it")],
    ),
    (
        "uplink missing on a host",
        {"hosts": [BASE["hosts"][0], {"name": "host2", "cpus": 2, "memory": "4GiB"}]},
        [(("networks", 0, "uplink"), 'uplink "team0" is not a team or NIC of host host2; expected one of: eth0, eth1')],
    ),
    (
        "NIC in two teams",
        {
            "hosts": [
                {
                    "name": "host1",
                    "cpus": 1,
                    "memory": "1GiB",
                    "teams": [{"name": "team0", "members": ["eth0"]}, {"name": "team1", "members": ["eth0", "eth1"]}],
                }
            ],
            "networks": [{"name": "prod", "subnet": "198.18.10.0/24"}],
        },
        [
            (
                ("hosts", 0, "teams", 1, "members", 0),
                'NIC "eth0" is already a member of team team0; expected each NIC in one team at most',
            )
        ],
    ),
    (
        "unknown switch",
        {
            "hosts": [{"name": "host1", "cpus": 1, "memory": "1GiB", "nics": [{"name": "eth0", "switch": "sw9"}]}],
            "networks": [{"name": "prod", "subnet": "198.18.10.0/24"}],
        },
        [(("hosts", 0, "nics", 0, "switch"), 'unknown switch "sw9"; expected one of: sw0, sw1')],
    ),
    (
        "anti-affinity to an unknown group",
        {"guests": [{"name": "web", "replicas": 2, "nics": [{"network": "prod"}], "anti_affinity": ["db"]}]},
        [(("guests", 0, "anti_affinity", 0), 'unknown guest group "db"; expected one of: web')],
    ),
    (
        "max below current",
        {"guests": [{"name": "web", "vcpus": 2, "max_vcpus": 1, "memory": "512MiB", "max_memory": "256MiB"}]},
        [
            (("guests", 0, "max_vcpus"), "max_vcpus 1 is below vcpus 2; expected at least 2"),
            (("guests", 0, "max_memory"), "max_memory 256MiB is below memory 512MiB; expected at least 512MiB"),
        ],
    ),
    (
        "tiny VM",
        {"guests": [{"name": "web", "kind": "vm", "memory": "32MiB"}]},
        [(("guests", 0, "memory"), "too little memory for a VM; expected at least 64MiB")],
    ),
    (
        "service without backends and a reused listen address",
        {"services": [BASE["services"][0], {"name": "api", "listen": "127.0.0.1:8080"}]},
        [
            (("services", 1), "no backends; expected backends (a guest group) or servers"),
            (
                ("services", 1, "listen"),
                "listen address already used by service web; expected a distinct address per service",
            ),
        ],
    ),
    (
        "bad listen address",
        {"services": [{"name": "web", "listen": "8080", "backends": {"group": "web"}}]},
        [(("services", 0, "listen"), 'expected an address like 127.0.0.1:8080, got "8080"')],
    ),
    (
        "isolated network with an uplink",
        {"networks": [{"name": "prod", "mode": "isolated", "subnet": "198.18.10.0/24", "uplink": "team0"}]},
        [(("networks", 0, "uplink"), "an isolated network has no uplink; expected no uplink, or mode bridged or nat")],
    ),
    (
        "affinity and anti-affinity to the same group",
        {"guests": [*BASE["guests"], {"name": "db", "affinity": ["web"], "anti_affinity": ["web"]}]},
        [
            (
                ("guests", 1, "anti_affinity", 0),
                '"web" is in both affinity and anti_affinity; expected it in one of them',
            )
        ],
    ),
    (
        "a host port forwarded twice",
        {
            "networks": [
                {
                    "name": "prod",
                    "subnet": "198.18.10.0/24",
                    "port_forwards": [{"host_port": 8080, "guest": "web-0", "guest_port": 80}],
                },
                {
                    "name": "nat0",
                    "mode": "nat",
                    "subnet": "198.19.20.0/24",
                    "port_forwards": [
                        {"host_port": 8080, "guest": "web-1", "guest_port": 80, "protocol": "udp"},
                        {"host_port": 8080, "guest": "web-1", "guest_port": 80},
                    ],
                },
            ]
        },
        [
            (
                ("networks", 1, "port_forwards", 1, "host_port"),
                "tcp port 8080 is already forwarded by networks[0].port_forwards[0]; expected a host port used once",
            )
        ],
    ),
    (
        "port forward to an unknown guest",
        {
            "networks": [
                {
                    "name": "prod",
                    "subnet": "198.18.10.0/24",
                    "port_forwards": [{"host_port": 8080, "guest": "web-7", "guest_port": 80}],
                }
            ]
        },
        [
            (
                ("networks", 0, "port_forwards", 0, "guest"),
                'unknown guest "web-7"; expected a guest name such as: web-0, web-1',
            )
        ],
    ),
]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reference_rule(changes: dict[str, Any], expected: list[tuple[tuple[str | int, ...], str]]) -> None:
    assert check_references(with_changes(**changes)) == expected


@pytest.mark.parametrize(("guests", "prefix"), [(1, 30), (5, 29), (6, 28), (13, 28), (14, 27), (254, 23)])
def test_small_subnet_suggests_the_prefix_that_fits(guests: int, prefix: int) -> None:
    spec = with_changes(
        networks=[{"name": "prod", "subnet": "198.18.10.0/30"}],
        guests=[{"name": "web", "replicas": guests, "nics": [{"network": "prod"}]}],
        services=[],
    )
    problems = check_references(spec)
    if guests <= 1:
        assert problems == []
        return
    [(loc, message)] = problems
    assert loc == ("networks", 0, "subnet")
    assert message.endswith(f"expected a /{prefix} or larger")
    # the suggested prefix really fits, and one longer would not
    assert 2 ** (32 - prefix) - 3 >= guests > 2 ** (32 - prefix - 1) - 3


@pytest.mark.parametrize(("ha", "problem"), [
    ({"heartbeat_interval": "100ms", "self_fence_timeout": "5s"}, None),
    ({"heartbeat_interval": "2s", "self_fence_timeout": "4s"}, None),
    ({"heartbeat_interval": "3s", "self_fence_timeout": "5s"}, "leaves less than two beats per self_fence_timeout"),
    ({"heartbeat_interval": "5s", "self_fence_timeout": "5s"}, "leaves less than two beats per self_fence_timeout"),
])
def test_a_heartbeat_interval_must_leave_two_beats_per_self_fence_timeout(ha: dict[str, str], problem: str | None) -> None:
    problems = check_references(with_changes(policies={"ha": ha}))
    if problem is None:
        assert problems == []
    else:
        assert [loc for loc, _ in problems] == [("policies", "ha", "heartbeat_interval")]
        assert problem in problems[0][1]


@pytest.mark.parametrize("field", ["heartbeat_interval", "self_fence_timeout"])
@pytest.mark.parametrize("value", ["0s", 0, "0ms"])
def test_a_safety_loop_cannot_be_turned_off_by_a_zero_duration(field: str, value: object) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        with_changes(policies={"ha": {field: value}})
    assert "0 would turn this safety loop off" in str(err.value)
    assert err.value.errors()[0]["loc"] == ("policies", "ha", field)
