"""Spec loading: every problem of a bad file, with file:line, field path and what was expected.

Each bad file in tests/spec/bad/ is a small spec with one kind of mistake; the expected
output is asserted line by line, exactly, so a change of wording or line mapping shows up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nonstop.specfile import SpecError, SpecProblem, load_spec, load_spec_text, render_field_path

HERE = Path(__file__).parent
BAD = HERE / "bad"
REPO = HERE.parents[1]

EXPECTED: dict[str, list[str]] = {
    "bad_size.yaml": [
        '{f}:6 guests[0].memory: expected a size like 512MiB, got "lots"',
        "{f}:9 guests[0].disks[1].size: expected a non-negative size, got -5",
    ],
    "bad_enum.yaml": [
        '{f}:6 guests[0].kind: expected one of: vm, process (got "container")',
        "{f}:10 services[0].algorithm: expected one of: round-robin, weighted-round-robin, least-connections, "
        "least-recently-used, most-recently-used, random, power-of-two, source-hash, consistent-hash "
        '(got "fastest")',
        '{f}:13 policies.ha.failback: expected one of: manual, auto, balanced (got "sometimes")',
    ],
    "unknown_network.yaml": [
        '{f}:10 guests[0].nics[1].network: unknown network "dmz"; expected one of: prod',
    ],
    "missing_group.yaml": [
        '{f}:9 services[0].backends.group: unknown guest group "webs"; expected one of: web',
    ],
    "duplicate_names.yaml": [
        '{f}:4 hosts[1].name: duplicate name "host1" (already used by hosts[0]); expected unique names',
        '{f}:8 guests[2].name: duplicate name "web" (already used by guests[0]); expected unique names',
    ],
    "team_member.yaml": [
        '{f}:9 hosts[0].teams[0].members[1]: "eth2" is not a NIC of host host1; expected one of: eth0, eth1',
        '{f}:10 hosts[0].teams[0].primary: primary "eth3" is not a member of the team; expected one of: eth0, eth2',
    ],
    "small_subnet.yaml": [
        "{f}:6 networks[0].subnet: subnet 198.18.10.0/29 is too small: 5 usable addresses but its guests "
        "need 8; expected a /28 or larger",
    ],
    "missing_field.yaml": [
        '{f}:3 hosts[0].cpus: missing required field "cpus"',
        '{f}:5 hosts[1].name: missing required field "name"',
    ],
    "syntax_error.yaml": [
        "{f}:5: invalid YAML: while parsing a block collection, expected <block end>, but found "
        "'<block mapping start>'; check the indentation",
    ],
    "unknown_field.yaml": [
        '{f}:3 hosts[0].memory: missing required field "memory"',
        '{f}:5 hosts[0].memroy: unknown field "memroy"; did you mean "memory"? (expected one of: name, cpus, '
        "memory, disk, nics, teams, power_supplies, drives, bmc, labels, patch_level)",
        '{f}:6 hosts[0].colour: unknown field "colour" (expected one of: name, cpus, memory, disk, nics, teams, '
        "power_supplies, drives, bmc, labels, patch_level)",
    ],
    "duplicate_key.yaml": [
        '{f}:6 hosts[0].cpus: duplicate key "cpus" (first given on line 4; each key may appear once)',
    ],
}

BROKEN_EXAMPLE = [
    '{f}:11 hosts[0].teams[0].members[1]: "eth2" is not a NIC of host host1; expected one of: eth0, eth1',
    '{f}:13 hosts[1].cpus: expected a whole number, got "two"',
    '{f}:15 hosts[2].name: duplicate name "host1" (already used by hosts[0]); expected unique names',
    '{f}:17 hosts[2].memory: expected a size like 512MiB, got "lots"',
    '{f}:24 networks[1].mode: expected one of: bridged, nat, isolated (got "masquerade")',
    '{f}:32 guests[0].nics[0].bandwidth: expected a rate like 100Mbit, got "fast"',
    '{f}:37 guests[1].colour: unknown field "colour" (expected one of: name, kind, replicas, vcpus, max_vcpus, '
    "memory, max_memory, disks, nics, image, command, port, priority, spread, affinity, anti_affinity, labels)",
    '{f}:42 services[0].backends.group: unknown guest group "webb"; expected one of: web, api',
]


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value).splitlines()


def test_every_bad_file_has_an_expectation() -> None:
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_reports_every_problem_exactly(name: str) -> None:
    path = BAD / name
    assert problems_of(path) == [line.format(f=path) for line in EXPECTED[name]]


def test_broken_example_reports_field_and_reference_errors_together() -> None:
    path = REPO / "examples" / "broken.yaml"
    assert problems_of(path) == [line.format(f=path) for line in BROKEN_EXAMPLE]


def test_problems_carry_structured_fields() -> None:
    path = BAD / "bad_size.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    first = info.value.problems[0]
    assert first == SpecProblem(str(path), 6, "guests[0].memory", 'expected a size like 512MiB, got "lots"')
    assert first.loc == ("guests", 0, "memory")
    assert first.to_dict() == {
        "file": str(path),
        "line": 6,
        "field": "guests[0].memory",
        "message": 'expected a size like 512MiB, got "lots"',
    }


def test_example_lab_loads_with_units_parsed() -> None:
    spec = load_spec(REPO / "examples" / "lab.yaml")
    assert spec.cluster == "lab"
    assert [h.name for h in spec.hosts] == ["host1", "host2", "host3"]
    assert all(h.memory == 4 * 1024**3 and h.cpus == 2 for h in spec.hosts)
    assert all(h.teams[0].members == ["eth0", "eth1"] and h.teams[0].primary == "eth0" for h in spec.hosts)
    web = spec.group("web")
    assert (web.kind.value, web.replicas, web.memory, web.max_memory) == ("vm", 3, 256 * 1024**2, 512 * 1024**2)
    assert web.nics[0].bandwidth == 100_000_000
    assert web.disks[0].size == 1024**3
    assert spec.policies.allocation_ratios.memory == 1.5
    assert spec.policies.reserved.memory == 512 * 1024**2
    assert spec.policies.ha.heartbeat_interval == pytest.approx(0.1)  # examples/lab.yaml: 100 ms heartbeats (docs/demo.md)
    assert spec.policies.ha.host_failures_to_tolerate == 1


def test_anchors_and_merge_keys_work_and_keep_lines() -> None:
    text = """\
cluster: lab
x-host: &host {cpus: 2, memory: 4GiB}
hosts:
  - <<: *host
    name: host1
  - <<: *host
    name: host2
    memory: 2GiB
  - <<: *host
    name: host3
    cpus: zero
"""
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "m.yaml")
    # Top-level x-... keys are ignored; the override on line 11 wins over the merged cpus.
    assert str(info.value).splitlines() == ['m.yaml:11 hosts[2].cpus: expected a whole number, got "zero"']
    spec = load_spec_text(text.replace("cpus: zero", "cpus: 1"), "m.yaml")
    assert [(h.cpus, h.memory) for h in spec.hosts] == [(2, 4 * 1024**3), (2, 2 * 1024**3), (1, 4 * 1024**3)]


def test_merge_key_override_is_not_a_duplicate() -> None:
    text = "cluster: lab\nhosts:\n  - &h {name: host1, cpus: 2, memory: 4GiB}\n  - {<<: *h, name: host2}\n"
    spec = load_spec_text(text, "ok.yaml")
    assert [h.name for h in spec.hosts] == ["host1", "host2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "e.yaml:1: expected a mapping with cluster, hosts, ...; the file is empty"),
        ("- a\n- b\n", "e.yaml:1: expected a mapping with cluster, hosts, ...; got a list"),
        (
            "cluster: a\n---\ncluster: b\n",
            "e.yaml:2: invalid YAML: expected a single document in the stream, but found another document",
        ),
        ("cluster: lab\nhosts: {cpus: 2}\n", "e.yaml:2 hosts: expected a list, got a mapping"),
        (
            "cluster: Lab_1\nhosts:\n  - {name: h1, cpus: 2, memory: 1GiB}\n",
            "e.yaml:1 cluster: expected a short lowercase name (a letter, then letters, digits or '-'; at most 15 "
            'characters), got "Lab_1"',
        ),
        ("cluster: lab\nhosts: []\n", "e.yaml:2 hosts: expected at least 1 item(s), got 0"),
        (
            "cluster: lab\nhosts:\n  - {name: h1, cpus: 0, memory: 1GiB}\n",
            "e.yaml:3 hosts[0].cpus: expected a number >= 1, got 0",
        ),
        (
            "cluster: lab\nhosts:\n  - {name: h1, cpus: 1, memory: 1GiB, bmc: x}\n",
            'e.yaml:3 hosts[0].bmc: expected a mapping of fields, got "x"',
        ),
        (
            "cluster: lab\nhosts:\n  - {name: h1, cpus: 1, memory: 1GiB}\npolicies:\n  ha: {heartbeat_interval: soon}\n",
            'e.yaml:5 policies.ha.heartbeat_interval: expected a duration like 200ms, got "soon"',
        ),
    ],
)
def test_document_level_problems(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "e.yaml")
    assert str(info.value) == expected


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert problems_of(missing) == [
        f"{missing}: cannot read the file (No such file or directory); expected a UTF-8 YAML file"
    ]
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"cluster: caf\xe9\n")
    [line] = problems_of(latin)
    assert line.startswith(f"{latin}: cannot read the file (") and line.endswith("expected a UTF-8 YAML file")


def test_problems_are_sorted_by_line_and_one_per_line() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(REPO / "examples" / "broken.yaml")
    lines = [p.line for p in info.value.problems]
    assert lines == sorted(lines) and len(str(info.value).splitlines()) == len(lines)


@pytest.mark.parametrize(
    ("loc", "text"),
    [((), ""), (("cluster",), "cluster"), (("guests", 1, "memory"), "guests[1].memory"), (("a", 0, 2), "a[0][2]")],
)
def test_render_field_path(loc: tuple[str | int, ...], text: str) -> None:
    assert render_field_path(loc) == text


def test_load_model_text_reports_against_the_given_model() -> None:
    from pydantic import BaseModel, ConfigDict, Field

    from nonstop.specfile import load_model_text

    class Backend(BaseModel):
        model_config = ConfigDict(extra="forbid")
        address: str
        weight: int = Field(default=1, ge=0)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        backends: list[Backend]

    def cross(config: Config) -> list[tuple[tuple[str | int, ...], str]]:
        return [
            (("backends", i, "address"), "expected host:port")
            for i, b in enumerate(config.backends)
            if ":" not in b.address
        ]

    text = "backends:\n  - {address: a:1, wieght: 2}\n  - address: b:2\n    weight: -1\n"
    with pytest.raises(SpecError) as info:
        load_model_text(text, "lb.yaml", Config, cross)
    assert str(info.value).splitlines() == [
        'lb.yaml:2 backends[0].wieght: unknown field "wieght"; did you mean "weight"? (expected one of: address, weight)',
        "lb.yaml:4 backends[1].weight: expected a number >= 0, got -1",
    ]
    with pytest.raises(SpecError) as info:
        load_model_text("backends:\n  - address: nowhere\n", "lb.yaml", Config, cross)
    assert str(info.value) == "lb.yaml:2 backends[0].address: expected host:port"
    assert load_model_text("backends: [{address: 'a:1'}]", "lb.yaml", Config, cross).backends[0].address == "a:1"
