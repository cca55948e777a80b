"""``nonstop lab`` verbs end to end: up from a YAML file, status, cut/restore, isolate,
forward, down; exit codes for bad input and for no lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nonstop.cli.main import app
from nonstop.lab import names
from nonstop.net import netns

from .conftest import unique_cluster

pytestmark = pytest.mark.root


def test_lab_verbs(tmp_path: Path) -> None:
    cluster = unique_cluster()
    spec = {
        "cluster": cluster,
        "hosts": [{"name": "h1", "cpus": 1, "memory": "1GiB"}, {"name": "h2", "cpus": 1, "memory": "1GiB"}],
        "networks": [{"name": "prod", "subnet": "198.18.10.0/24"}],
    }
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(spec))
    runner = CliRunner()
    try:
        result = runner.invoke(app, ["lab", "up", str(path)])
        assert result.exit_code == 0, result.output
        assert f"lab {cluster} is up" in result.output
        result = runner.invoke(app, ["lab", "cut", "h1", "eth1", "-c", cluster])
        assert result.exit_code == 0, result.output
        status = json.loads(runner.invoke(app, ["lab", "status", "-c", cluster]).output)
        assert status["phase"] == "up"
        assert status["hosts"]["h1"]["nics"]["eth1"]["switch_port"]["up"] is False
        assert status["hosts"]["h1"]["nics"]["eth0"]["host_end"]["carrier"] is True
        assert runner.invoke(app, ["lab", "restore", "h1", "-c", cluster]).exit_code == 0
        assert runner.invoke(app, ["lab", "isolate", "h2", "-c", cluster]).exit_code == 0
        assert runner.invoke(app, ["lab", "cut", "h1", "eth7", "-c", cluster]).exit_code == 2
        result = runner.invoke(app, ["lab", "forward", "ctl", "198.18.0.254", "80", "-c", cluster])
        assert result.exit_code == 0 and result.output.startswith("127.0.0.1:"), result.output
        assert len(json.loads(runner.invoke(app, ["lab", "status", "-c", cluster]).output)["forwards"]) == 1
        result = runner.invoke(app, ["lab", "down", "-c", cluster])
        assert result.exit_code == 0, result.output
        assert netns.list_names(names.ns_prefix(cluster)) == []
        assert runner.invoke(app, ["lab", "status", "-c", cluster]).exit_code == 3
    finally:
        runner.invoke(app, ["lab", "down", "-c", cluster])


def test_bad_spec_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": unique_cluster(), "hosts": [{"name": "h1", "cpus": 1, "memory": "1GiB"}],
        "networks": [{"name": "prod", "subnet": "10.1.0.0/24"}],
    }))
    result = CliRunner().invoke(app, ["lab", "up", str(path)])
    assert result.exit_code == 2
    assert "outside the lab range" in result.output
