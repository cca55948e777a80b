"""``nonstop patch --dry-run`` against a seeded SQLite store (the planner's batches, or its refusal
with the reason and exit code 3), a new rollout refused by the planner, and the progress bars and
report rendering on a rollout record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nonstop.cli.main import app
from nonstop.cli.patch_verbs import _Bars
from nonstop.core.patching.steps import StepResult, Tick, new_rollout, transition
from nonstop.patching.report import report, table

from .seeded import rollouts, seed

pytestmark = pytest.mark.timeout(60)


def _seed(path: Path, spread: str) -> str:
    return seed(path, spread)


def _patch(url: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["patch", "--store", url, "--cluster", "c", *args])


def test_dry_run_prints_batches(tmp_path: Path) -> None:
    url = _seed(tmp_path / "s.db", "soft")
    result = _patch(url, "--to", "L2", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["ok"] and plan["batches"] == [["h1"], ["h2"], ["h3"]]


def test_planner_refuses_with_the_reason(tmp_path: Path) -> None:
    url = _seed(tmp_path / "s.db", "hard")
    result = _patch(url, "--to", "L2", "--dry-run", "--json")
    assert result.exit_code == 3
    plan = json.loads(result.output)
    assert not plan["ok"] and any("HA headroom: db-0 cannot leave h1" in r for r in plan["refused"])
    # starting for real is refused the same way, and nothing is written
    result = _patch(url, "--to", "L2")
    assert result.exit_code == 3 and "the planner refuses" in result.output

    assert rollouts(url) == []


def test_bars_and_report_render() -> None:
    r, _ = transition(new_rollout("r1", "L2", (("h1",), ("h2",)), 0.0, levels={"h1": "L1", "h2": "L1"}), Tick(), 0.0)
    r, _ = transition(r, StepResult("h1", r.hosts["h1"].step, ok=True), 1.5)
    console = Console(force_terminal=True, width=120, record=True)
    bars = _Bars(console, enabled=True)
    with bars.progress:
        bars.update(r, "h1: enter-maintenance")
    assert set(bars.tasks) == {"rollout", "h1", "h2"}
    doc = report(r, {"h1": "L1", "h2": "L1"})
    assert doc["complete"] is False and doc["hosts"][0]["durations"] == {"precheck": 1.5}
    console.print(table(doc))
    text = console.export_text()
    assert "h1" in text and "precheck 1.5s" in text
