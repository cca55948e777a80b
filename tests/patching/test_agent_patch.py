"""The agent's patch capability against a real SQLite store: requests run as real shell commands,
results (exit code, output, timeout) come back in the record; the level is published; an
interrupted request is never re-run. The re-exec and the self-test guest are covered by the lab tests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nonstop.agent.patch import PatchService, request_key
from nonstop.patching import cluster as pc
from nonstop.store import keys, open_store
from nonstop.store.state import put_spec

pytestmark = pytest.mark.timeout(60)


async def _serve(tmp_path: Path, record: dict[str, Any], wait_for: tuple[str, ...]) -> dict[str, Any]:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    stop = asyncio.Event()
    service = PatchService(store, "c", "h1", tmp_path / "agent", poll=0.05)
    await store.put_json(request_key("c", "h1"), {"type": "host-command", "id": "r/h1/0/patch", "host": "h1",
                                                  "action": "patch", "state": "requested", **record})
    task = asyncio.create_task(service.run(stop))
    try:
        for _ in range(400):
            value = await store.get_json(request_key("c", "h1"))
            if value and value.get("state") in wait_for:
                observed = await store.get_json(keys.host_observed("c", "h1"))
                return {**value, "_observed": observed}
            await asyncio.sleep(0.05)
        raise AssertionError(f"request never reached {wait_for}: {value}")
    finally:
        stop.set()
        await task
        await store.close()


def test_default_command_records_the_level(tmp_path: Path) -> None:
    rec = asyncio.run(_serve(tmp_path, {"command": None, "target": "L7", "timeout": 10, "restart_agent": False},
                             ("done", "failed")))
    assert rec["state"] == "done" and rec["exit_code"] == 0 and rec["patch_level"] == "L7"
    assert (tmp_path / "agent" / "patch-level").read_text() == "L7"
    assert rec["_observed"]["patch_level"] == "L7" and rec["_observed"]["agent_version"]


def test_failing_command_reports_exit_code_and_output(tmp_path: Path) -> None:
    rec = asyncio.run(_serve(tmp_path, {"command": 'echo "no space left on $NONSTOP_HOST" >&2; exit 3',
                                        "target": "L2", "timeout": 10}, ("done", "failed")))
    assert rec["state"] == "failed" and rec["exit_code"] == 3 and rec["error"] == "exit code 3"
    assert "no space left on h1" in rec["output"]


def test_hanging_command_is_killed_at_the_timeout(tmp_path: Path) -> None:
    rec = asyncio.run(_serve(tmp_path, {"command": "echo started; sleep 60", "target": "L2", "timeout": 0.5},
                             ("timeout", "done", "failed")))
    assert rec["state"] == "timeout" and "timed out" in rec["error"] and "started" in rec["output"]
    assert rec["finished_at"] - rec["started_at"] < 5


def test_a_request_interrupted_by_the_agents_death_is_not_rerun(tmp_path: Path) -> None:
    rec = asyncio.run(_serve(tmp_path, {"command": "touch ran", "target": "L2", "timeout": 5,
                                        "state": "running"}, ("failed", "done")))
    assert rec["state"] == "failed" and "restarted while the command ran" in rec["error"]


def test_patch_level_warning(tmp_path: Path) -> None:
    from nonstop.core.spec import ClusterSpec

    async def go() -> list[str | None]:
        store = open_store(f"sqlite:///{tmp_path / 'w.db'}")
        try:
            await put_spec(store, ClusterSpec.model_validate({"cluster": "c", "hosts": [
                {"name": "h1", "cpus": 2, "memory": "2GiB", "disk": "10GiB", "nics": [{"name": "eth0"}]},
                {"name": "h2", "cpus": 2, "memory": "2GiB", "disk": "10GiB", "nics": [{"name": "eth0"}]}]}))
            out = []
            for h, level in (("h1", "L1"), ("h2", "L1")):
                await store.put(keys.host_observed("c", h), json.dumps({"patch_level": level}).encode())
            out.append(await pc.patch_level_warning(store, "c"))
            await store.put(keys.host_observed("c", "h2"), json.dumps({"patch_level": "L2"}).encode())
            out.append(await pc.patch_level_warning(store, "c"))
            return out
        finally:
            await store.close()

    same, differ = asyncio.run(go())
    assert same is None
    assert differ == "patch levels differ: h1=L1, h2=L2"
