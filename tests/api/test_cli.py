"""The CLI's API verbs against a real API server: in-process uvicorn for most verbs (typer's runner
calls the real client over HTTP), and `nonstop api serve` as a real process for discovery through
the endpoint file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nonstop.api.app import create_app
from nonstop.cli.main import app

from .seeding import CLUSTER, LAB_YAML, ROOT, ControllerStandIn, RunningServer, StoreLab

runner = CliRunner()


@pytest.fixture
def server(store_url: str, token_file: Path, controller: ControllerStandIn):
    lab = StoreLab(store_url)
    lab.delay = 0.0
    with RunningServer(create_app(store_url, CLUSTER, token_file, lab=lab)) as s:
        s.lab = lab
        yield s


def run(server: RunningServer, token_file: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--api", server.url, "--token-file", str(token_file)])
    return result.exit_code, result.output


def test_read_verbs(server: RunningServer, token_file: Path) -> None:
    code, text = run(server, token_file, "status")
    assert code == 0 and "healthy" in text and "6/6 guests running" in text
    code, text = run(server, token_file, "get", "hosts", "--json")
    assert code == 0 and [h["name"] for h in json.loads(text)] == ["host1", "host2", "host3"]
    for kind in ("hosts", "guests", "services", "networks", "teams", "components", "events", "switches"):
        code, text = run(server, token_file, "get", kind)
        assert code == 0, (kind, text)
    code, text = run(server, token_file, "get", "components")
    assert "PSU2" in text and "degraded" in text  # host3's power group, as the hardware watcher recorded it
    assert run(server, token_file, "get", "planets")[0] == 2
    code, text = run(server, token_file, "describe", "guest", "web-0")
    assert code == 0 and "HostStateFilter" in text and "would place on" in text
    assert run(server, token_file, "describe", "guest", "nope")[0] == 2
    code, text = run(server, token_file, "logs", "--json")
    assert code == 0 and json.loads(text.splitlines()[0])["kind"] == "guest-placed"
    assert run(server, token_file, "console", "web-0")[0] == 3  # no console log reachable here


def test_mutating_verbs_and_exit_codes(server: RunningServer, token_file: Path, tmp_path: Path) -> None:
    code, text = run(server, token_file, "maintenance", "enter", "host3", "--json")
    assert code == 0 and (json.loads(text)["state"], json.loads(text)["status"]) == ("maintenance", "done")
    code, text = run(server, token_file, "maintenance", "enter", "host3")
    assert code == 0 and "host3: maintenance (already)" in text and "already maintenance" in text
    assert run(server, token_file, "maintenance", "enter", "host9")[0] == 2
    guests = json.loads(run(server, token_file, "get", "guests", "--json")[1])
    guest = next(g for g in guests if g["host"] not in ("host2", "host3") and g["kind"] == "vm")
    code, text = run(server, token_file, "migrate", guest["name"], "--to", "host3")
    assert code == 3 and "removed by HostStateFilter" in text  # the target is in maintenance
    process = next(g for g in guests if g["host"] == "host1" and g["kind"] == "process")
    code, text = run(server, token_file, "migrate", process["name"], "--to", "host2")
    assert code == 3 and "cold" in text  # a process guest cannot move live
    assert run(server, token_file, "migrate", process["name"], "--to", "host2", "--mode", "warp")[0] == 2
    code, text = run(server, token_file, "migrate", guest["name"], "--to", "host2")
    assert code == 0 and f"{guest['name']}: live migration host1 → host2 accepted" in text, text
    code, text = run(server, token_file, "migrate", process["name"], "--to", "host2", "--mode", "cold", "--json")
    assert code == 0 and (json.loads(text)["status"], json.loads(text)["target"]) == ("accepted", "host2"), text
    code, text = run(server, token_file, "get", "intents", "--json")
    intents = json.loads(text)
    assert code == 0 and [i["kind"] for i in intents] == ["migrate", "migrate", "maintenance", "maintenance"]
    code, text = run(server, token_file, "get", "intent", intents[0]["id"])
    assert code == 0 and intents[0]["id"] in text and "accepted" in text
    assert run(server, token_file, "get", "intent", "migrate-nope")[0] == 2
    assert run(server, token_file, "get", "intent")[0] == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text(LAB_YAML.read_text().replace("memory: 128MiB", "memory: lots"))
    code, text = run(server, token_file, "apply", str(broken))
    assert code == 2 and "broken.yaml:" in text and "guests[1].memory" in text
    code, text = run(server, token_file, "apply", str(LAB_YAML))
    assert code == 0 and "no change" in text
    assert run(server, token_file, "fail", "planet", "x")[0] == 2
    code, text = run(server, token_file, "fail", "host", "host1", "--json")
    assert code == 0 and json.loads(text)["action"] == "fail_host"
    assert run(server, token_file, "partition", "host2")[0] == 3  # StoreLab cannot partition → 409
    assert run(server, token_file, "heal")[0] == 0
    assert [c[0] for c in server.lab.calls] == ["fail_host", "heal"]
    # the viewer token cannot change anything: exit 1 with the 403 message
    viewer_only = tmp_path / "viewer.json"
    viewer_only.write_text(json.dumps({"viewer": json.loads(token_file.read_text())["viewer"]}))
    os.chmod(viewer_only, 0o600)
    result = runner.invoke(app, ["heal", "--api", server.url, "--token-file", str(viewer_only)])
    assert result.exit_code == 1 and "403" in result.output
    result = runner.invoke(app, ["status", "--api", "http://127.0.0.1:9", "--token-file", str(token_file)])
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_an_unanswered_request_names_its_intent(store_url: str, token_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from nonstop.api import actions

    monkeypatch.setattr(actions, "OUTCOME_WAIT", 0.2)
    with RunningServer(create_app(store_url, CLUSTER, token_file)) as s:  # no controller answers
        code, text = run(s, token_file, "maintenance", "enter", "host2")
        assert code == 0 and "host2: maintenance requested" in text and "nonstop get intent maintenance-" in text
        intent = text.split("nonstop get intent ")[1].split("`")[0]
        code, text = run(s, token_file, "get", "intent", intent)
        assert code == 0 and "pending" in text and "enter maintenance on host2" in text
        code, text = run(s, token_file, "migrate", "web-0", "--to", "host3", "--mode", "cold")
        assert code == 0 and "requested" in text and "nonstop get intent migrate-" in text, text


def test_api_serve_process_and_discovery(store_url: str, tmp_path: Path) -> None:
    stop_signal = signal.SIGTERM  # SIGINT takes the same handler (ApiServer.serve_forever)
    env = {**os.environ, "NONSTOP_RUN_DIR": str(tmp_path / "run"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nonstop.cli.main", "api", "serve", "--store", store_url,
                             "--cluster", CLUSTER, "--port", "0"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = tmp_path / "run" / CLUSTER / "api.json"
        deadline = time.monotonic() + 20
        while not endpoint.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        tokens = tmp_path / "run" / CLUSTER / "tokens.json"
        assert oct(tokens.stat().st_mode & 0o777) == "0o600"
        result = subprocess.run([sys.executable, "-m", "nonstop.cli.main", "get", "guests", "--json"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)) == 6
    finally:
        proc.send_signal(stop_signal)
        assert proc.wait(10) == 0
    assert not endpoint.exists()


def test_remove_run_files_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nonstop.api import server as srv
    from nonstop.api.auth import ensure_tokens

    monkeypatch.setattr(srv, "RUN_ROOT", tmp_path)
    ensure_tokens(srv.default_token_file("c1"))
    srv.endpoint_file("c1").write_text("{}")
    other = tmp_path / "c1" / "lab.json"
    other.write_text("{}")
    srv.remove_run_files("c1")
    assert sorted(p.name for p in (tmp_path / "c1").iterdir()) == ["lab.json"]
