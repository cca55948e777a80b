"""The key layout: each function's key, their prefixes, ordering of event keys, and parsing back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.store import keys

CASES = [
    (keys.spec("lab"), "/nonstop/lab/spec"),
    (keys.leader("lab"), "/nonstop/lab/leader"),
    (keys.host_desired("lab", "host1"), "/nonstop/lab/hosts/host1/desired"),
    (keys.host_observed("lab", "host1"), "/nonstop/lab/hosts/host1/observed"),
    (keys.host_alive("lab", "host1"), "/nonstop/lab/hosts/host1/alive"),
    (keys.guest_desired("lab", "web-0"), "/nonstop/lab/guests/web-0/desired"),
    (keys.guest_observed("lab", "web-0"), "/nonstop/lab/guests/web-0/observed"),
    (keys.guest_lock("lab", "web-0"), "/nonstop/lab/guests/web-0/lock"),
    (keys.service_backends("lab", "web"), "/nonstop/lab/services/web/backends"),
    (keys.ipam("lab", "prod", "198.18.10.5"), "/nonstop/lab/ipam/prod/198.18.10.5"),
    (keys.event("lab", 42), "/nonstop/lab/events/00000000000000000042"),
    (keys.op("lab", "failover-7"), "/nonstop/lab/ops/failover-7"),
    (keys.epoch("lab", "web-0"), "/nonstop/lab/epoch/web-0"),
]


@pytest.mark.parametrize(("key", "expected"), CASES)
def test_layout(key: str, expected: str) -> None:
    assert key == expected


def test_every_key_is_under_its_prefixes() -> None:
    assert keys.host_observed("lab", "h").startswith(keys.hosts_prefix("lab"))
    assert keys.guest_lock("lab", "g").startswith(keys.guests_prefix("lab"))
    assert keys.ipam("lab", "n", "1.2.3.4").startswith(keys.ipam_prefix("lab", "n"))
    assert keys.ipam_prefix("lab", "n").startswith(keys.ipam_prefix("lab"))
    assert all(key.startswith(keys.cluster_prefix("lab")) for key, _ in CASES)
    assert not keys.spec("lab2").startswith(keys.cluster_prefix("lab"))


@given(st.lists(st.integers(min_value=0, max_value=10**19), min_size=2, max_size=20))
def test_event_keys_sort_like_their_numbers(seqs: list[int]) -> None:
    assert sorted(keys.event("lab", s) for s in seqs) == [keys.event("lab", s) for s in sorted(seqs)]


@pytest.mark.parametrize("bad", ["", "a/b", ".."])
def test_components_with_slashes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="without"):
        keys.guest_desired("lab", bad)


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("/nonstop/lab/spec", keys.ParsedKey("lab", "spec")),
        ("/nonstop/lab/guests/web-0/observed", keys.ParsedKey("lab", "guests", "web-0", "observed")),
        ("/nonstop/lab/ipam/prod/198.18.10.5", keys.ParsedKey("lab", "ipam", "prod", "198.18.10.5")),
        ("/nonstop/lab/epoch/web-0", keys.ParsedKey("lab", "epoch", "web-0")),
    ],
)
def test_parse_inverts_the_builders(key: str, parsed: keys.ParsedKey) -> None:
    assert keys.parse(key) == parsed


@pytest.mark.parametrize("bad", ["/other/lab/spec", "/nonstop/lab", "/nonstop//spec", "/nonstop/a/b/c/d/e"])
def test_parse_refuses_foreign_keys(bad: str) -> None:
    with pytest.raises(ValueError, match="expected|too many"):
        keys.parse(bad)
