"""``nonstop patch --dry-run`` against a seeded SQLite store (the planner's batches, or its refusal
with the reason and exit code 3), a new rollout refused by the planner, and the progress bars and
report rendering on a rollout record."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nonstop.cli.main import app
from nonstop.cli.patch_verbs import _Bars
from nonstop.core.patching.steps import StepResult, Tick, new_rollout, transition
from nonstop.core.spec import ClusterSpec
from nonstop.patching.report import report, table
from nonstop.store import keys, open_store
from nonstop.store.state import put_spec

pytestmark = pytest.mark.timeout(60)


def _seed(path: Path, spread: str) -> str:
    spec = ClusterSpec.model_validate({
        "cluster": "c",
        "hosts": [{"name": f"h{i}", "cpus": 2, "memory": "2GiB", "disk": "10GiB", "nics": [{"name": "eth0"}]}
                  for i in (1, 2, 3)],
        "guests": [{"name": "db", "kind": "process", "replicas": 3, "vcpus": 1, "memory": "64MiB", "spread": spread}],
    })
    url = f"sqlite:///{path}"

    async def go() -> None:
        store = open_store(url)
        try:
            await put_spec(store, spec)
            for i in range(3):
                await store.put_json(keys.guest_desired("c", f"db-{i}"), {
                    "name": f"db-{i}", "cluster": "c", "host": f"h{i + 1}", "kind": "process", "group": "db"})
            await store.put_json(keys.leader("c"), {"hosts": {"h1": "up", "h2": "up", "h3": "up"},
                                                    "maintenance": [], "updated_at": time.time()})
        finally:
            await store.close()

    asyncio.run(go())
    return url


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

    async def stored() -> Any:
        store = open_store(url)
        try:
            return await store.get_json(keys.op("c", "patch-rollout"))
        finally:
            await store.close()

    assert asyncio.run(stored()) is None


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
