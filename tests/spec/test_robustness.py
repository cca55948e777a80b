"""Properties of the loader on randomly broken versions of examples/lab.yaml.

Whatever the mutation: the loader returns a spec or raises SpecError (never anything else);
it fails exactly when pydantic or check_references would; every pydantic error is reported;
every problem has a line inside the file and a message that says what was expected or wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from nonstop.core.spec import ClusterSpec
from nonstop.core.spec_refs import check_references
from nonstop.specfile import SpecError, load_spec_text

LAB = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "lab.yaml").read_text())


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


ALL_PATHS = paths(LAB)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**12),
    st.sampled_from(["lots", "512MiB", "0", "host1", "web", "prod", "eth9", "198.18.0.0/30", "-", ""]),
    st.text(alphabet="abcxyz-019/:.", max_size=8),
    st.lists(st.sampled_from(["eth0", "eth1", "a"]), max_size=2),
    st.dictionaries(st.sampled_from(["name", "size", "zzz"]), st.integers(0, 3), max_size=2),
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(LAB))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.sampled_from(["colour", "name", "replicas", "memory"]))] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the path
    return data


def expected_outcome(data: dict[str, Any]) -> tuple[bool, set[tuple[Any, ...]]]:
    try:
        spec = ClusterSpec.model_validate(data)
    except ValidationError as exc:
        return False, {tuple(p for p in e["loc"] if p != "[key]") for e in exc.errors()}
    return not check_references(spec), set()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_loader_agrees_with_the_model_and_reports_every_error(data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    line_count = text.count("\n") + 1
    valid, pydantic_locs = expected_outcome(data)
    try:
        spec = load_spec_text(text, "m.yaml")
    except SpecError as exc:
        assert not valid
        assert exc.problems
        reported = {p.loc for p in exc.problems}
        assert pydantic_locs <= reported
        for problem in exc.problems:
            assert 1 <= problem.line <= line_count, problem
            assert problem.message and str(problem).startswith(f"m.yaml:{problem.line}")
            assert any(word in problem.message for word in ("expected", "missing", "unknown", "duplicate")), problem
        return
    assert valid
    assert spec == ClusterSpec.model_validate(data)
