"""``nonstop validate`` and ``nonstop schema`` through the real typer app and a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nonstop.cli.main import app
from nonstop.specfile import cluster_spec_schema, cluster_spec_schema_text

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "examples" / "lab.yaml"
BROKEN = REPO / "examples" / "broken.yaml"
SCHEMA = REPO / "docs" / "cluster-spec.schema.json"

runner = CliRunner()


def test_valid_spec_exits_0_with_a_summary() -> None:
    result = runner.invoke(app, ["validate", str(LAB)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"{LAB}: valid (cluster lab: 3 hosts, 6 guests in 2 groups, 3 networks, 2 services)"
    )


def test_broken_spec_exits_2_and_prints_every_problem() -> None:
    result = runner.invoke(app, ["validate", str(BROKEN)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith(f"{BROKEN}:")]
    problem_lines = [line for line in lines if not line.endswith("problems")]
    assert len(problem_lines) == 8
    assert f'{BROKEN}:17 hosts[2].memory: expected a size like 512MiB, got "lots"' in problem_lines


def test_json_output(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["validate", str(LAB), "--json"])
    assert ok.exit_code == 0
    body = json.loads(ok.output)
    assert body["valid"] is True and body["summary"]["hosts"] == 3 and body["summary"]["guests"] == 6
    bad = runner.invoke(app, ["validate", str(BROKEN), "--json"])
    assert bad.exit_code == 2
    body = json.loads(bad.stdout)
    assert body["valid"] is False
    assert body["problems"][0] == {
        "file": str(BROKEN),
        "line": 11,
        "field": "hosts[0].teams[0].members[1]",
        "message": '"eth2" is not a NIC of host host1; expected one of: eth0, eth1',
    }


def test_validate_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "lab.yaml"
    spec.write_text(LAB.read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN.read_text())
    before = sorted(os.listdir(tmp_path))
    monkeypatch.chdir(tmp_path)
    for path, code in ((spec, 0), (bad, 2), (tmp_path / "missing.yaml", 2)):
        assert runner.invoke(app, ["validate", str(path)]).exit_code == code
    # and once through a real process, as a user runs it
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "nonstop.cli.main", "validate", str(bad)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:17 hosts[2].memory" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == before


def test_committed_schema_is_the_generated_one() -> None:
    up_to_date = SCHEMA.read_text(encoding="utf-8") == cluster_spec_schema_text()
    assert up_to_date, "docs/cluster-spec.schema.json is out of date after a model change: run .venv/bin/nonstop schema"
    result = runner.invoke(app, ["schema", "--check", "--output", str(SCHEMA)])
    assert result.exit_code == 0


def test_schema_verb_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert runner.invoke(app, ["schema", "--check", "--output", str(out)]).exit_code == 1
    assert runner.invoke(app, ["schema", "--output", str(out)]).exit_code == 0
    assert json.loads(out.read_text()) == cluster_spec_schema()
    assert runner.invoke(app, ["schema", "--check", "--output", str(out)]).exit_code == 0


def test_schema_accepts_human_units_and_rejects_nonsense() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (arrives with schemathesis)")
    validator = jsonschema.Draft202012Validator(cluster_spec_schema())
    data = yaml.safe_load(LAB.read_text())
    assert list(validator.iter_errors(data)) == []
    data["hosts"][0]["nics"] = ["eth0", "eth1"]  # the shorthand the loader accepts
    data["hosts"][0]["power_supplies"] = 2
    assert list(validator.iter_errors(data)) == []
    data["hosts"][0]["memory"] = "lots"
    data["guests"][0]["nics"][0]["bandwidth"] = "fast"
    assert len(list(validator.iter_errors(data))) == 2
