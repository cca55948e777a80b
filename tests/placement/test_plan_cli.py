"""``nonstop plan FILE``: table, HA verdict, --json, --explain and the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from nonstop.cli.main import app

runner = CliRunner()

SMALL = """\
cluster: small
hosts:
  - {name: h1, cpus: 2, memory: 4GiB, disk: 20GiB}
  - {name: h2, cpus: 2, memory: 4GiB, disk: 20GiB}
  - {name: h3, cpus: 2, memory: 4GiB, disk: 20GiB}
guests:
  - {name: web, replicas: {replicas}, vcpus: 1, memory: {mem}, priority: 200, spread: hard}
  - {name: api, replicas: 2, vcpus: 1, memory: 256MiB}
policies:
  allocation_ratios: {{cpu: 4.0, memory: 1.0}}
  reserved: {{memory: 512MiB}}
"""


def write(tmp_path: Path, mem: str = "512MiB", replicas: int = 2) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL.replace("{mem}", mem).replace("{replicas}", str(replicas)).replace("{{", "{")
                    .replace("}}", "}"))
    return path


def test_plan_prints_hosts_overcommit_and_ha_verdict(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(write(tmp_path))])
    assert result.exit_code == 0, result.output
    for text in ("h1", "h2", "h3", "web-0", "api-1", "tolerates 1 host failure: yes", "max 3.5GiB"):
        assert text in result.output


def test_plan_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(write(tmp_path)), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["viable"] is True and data["ha"]["tolerates"] is True
    assert sorted(data["placement"]["placed"]) == ["api-0", "api-1", "web-0", "web-1"]
    h1 = data["hosts"][0]
    assert h1["resources"]["memory"]["effective"] == 4 * 1024**3 - 512 * 1024**2
    allocated_cpu = sum(h["resources"]["cpu"]["allocated"] for h in data["hosts"])
    assert allocated_cpu == 4
    assert data["hosts"][0]["resources"]["cpu"]["overcommit"] == len(data["hosts"][0]["guests"]) / 2


def test_plan_explain_shows_filters_and_weighers(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(write(tmp_path)), "--explain", "web-1"])
    assert result.exit_code == 0, result.output
    for text in ("Why web-1: filters", "AntiAffinityFilter", "SpreadWeigher", "decision: highest score"):
        assert text in result.output
    missing = runner.invoke(app, ["plan", str(write(tmp_path)), "--explain", "nosuch-0"])
    assert missing.exit_code == 2


def test_plan_not_viable_exits_3(tmp_path: Path) -> None:
    # Three web guests of 3GiB (hosts offer 3.5GiB), hard spread: placed, but a failure cannot be absorbed.
    result = runner.invoke(app, ["plan", str(write(tmp_path, "3GiB", 3)), "--json"])
    assert result.exit_code == 3
    data = json.loads(result.output)
    assert data["viable"] is False and data["ha"]["tolerates"] is False
    assert "cannot restart" in data["ha"]["reason"]
    text = runner.invoke(app, ["plan", str(write(tmp_path, "3GiB", 3))])
    assert text.exit_code == 3 and "tolerates 1 host failure: no" in text.output
    # A guest larger than any host: not placed at all.
    too_big = runner.invoke(app, ["plan", str(write(tmp_path, "5GiB"))])
    assert too_big.exit_code == 3 and "not placed" in too_big.output


def test_plan_bad_spec_exits_2_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cluster: bad\nhosts:\n  - {name: h1, cpus: 2, memory: lots}\n")
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert f"{path}:3" in result.stderr and "memory" in result.stderr


def test_plan_on_the_example_lab() -> None:
    lab = Path(__file__).resolve().parents[2] / "examples" / "lab.yaml"
    result = runner.invoke(app, ["plan", str(lab), "--json"])
    assert result.exit_code in (0, 3), result.output
    data = json.loads(result.output)
    assert data["cluster"] and len(data["hosts"]) >= 1
