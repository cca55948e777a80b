"""The agent's team report: the team daemon's status file → ``hosts/<h>/observed`` → the API's team view.

Real SQLite store, real status files in the daemon's format; the lab test (test_lab_api.py) cuts a
real cable under a running team daemon and agent.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from nonstop.agent.team_report import merge_observed, run_team_report, team_view
from nonstop.api import snapshot
from nonstop.specfile import load_spec
from nonstop.store import keys, open_store
from nonstop.store.state import put_spec

from .seeding import LAB_YAML


def daemon_status(active: str | None, eth0: str = "up", eth1: str = "up", at: float | None = None,
                  failovers: int = 0) -> dict[str, Any]:
    """What ``nonstop.net.team_daemon`` writes (its ``status()``), for host1's team0."""
    def member(state: str) -> dict[str, Any]:
        return {"state": state, "carrier": state != "down", "probe_ok": None, "counters": {"rx_packets": 7}}

    return {"host": "host1", "netns": "ns", "pid": 1, "updated_at": time.time() if at is None else at, "teams": {
        "team0": {"kind": "team", "mode": "active-backup", "active": active,
                  "transmit": [active] if active else [], "failovers": failovers,
                  "last_failover": {"kind": "active-changed", "at": 12.5} if failovers else None,
                  "members": {"eth0": member(eth0), "eth1": member(eth1)}}}}


def test_team_view_states_and_staleness() -> None:
    now = time.time()
    view = team_view(daemon_status("eth0"), now)
    assert view["teams"]["team0"]["state"] == "up"
    assert view["teams"]["team0"]["active"] == "eth0"
    assert view["nics"] == {"eth0": {"state": "up", "carrier": True, "team": "team0"},
                            "eth1": {"state": "up", "carrier": True, "team": "team0"}}
    cut = team_view(daemon_status("eth1", eth0="down", failovers=1), now)["teams"]["team0"]
    assert (cut["state"], cut["active"], cut["failovers"], cut["last_failover_at"]) == ("degraded", "eth1", 1, 12.5)
    assert cut["members"]["eth0"] == {"state": "down", "machine": "down", "carrier": False}
    # going-down still carries traffic (the machine's down-delay); both down = the team is down
    assert team_view(daemon_status("eth0", eth0="going-down"), now)["teams"]["team0"]["state"] == "up"
    assert team_view(daemon_status(None, eth0="down", eth1="down"), now)["teams"]["team0"]["state"] == "down"
    # counters change every second: they are not in the view, so the record does not churn
    assert "counters" not in json.dumps(view)
    stale = team_view(daemon_status("eth0", at=now - 30), now)
    assert stale["teams"]["team0"]["state"] == "unknown" and stale["teams"]["team0"]["active"] is None
    assert {v["state"] for v in stale["nics"].values()} == {"unknown"}
    lag = {"updated_at": now, "teams": {"lag0": {"kind": "lag", "members": {"p1": {"state": "up"}}}}}
    assert team_view(lag, now) == {"teams": {}, "nics": {}}


def test_report_reaches_the_api_view(tmp_path: Path) -> None:
    async def go() -> None:
        url = f"sqlite:///{tmp_path / 'store.db'}"
        store = open_store(url)
        spec = load_spec(LAB_YAML)
        try:
            await put_spec(store, spec)
            await store.put_json(keys.host_alive("lab", "host1"), {"host": "host1"})
            # the agent's own fields survive the merge (and ours survive the agent's)
            await store.put_json(keys.host_observed("lab", "host1"), {"usage": {"cpu_usage": 0.5}, "guests": ["a"]})
            status = tmp_path / "team-host1.json"
            status.write_text(json.dumps(daemon_status("eth0")))
            stop = asyncio.Event()
            task = asyncio.create_task(run_team_report(store, "lab", "host1", status, stop, interval=0.05))

            async def team() -> dict[str, Any]:
                raw = await snapshot.read_raw(store, "lab")
                host = next(h for h in snapshot.build(raw, "lab")["hosts"] if h["name"] == "host1")
                return {"team": host["teams"][0], "nics": {n["name"]: n["state"] for n in host["nics"]},
                        "usage": host["usage"]}

            async def wait_for(active: str) -> dict[str, Any]:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    seen = await team()
                    if seen["team"]["active"] == active:
                        return seen
                    await asyncio.sleep(0.05)
                raise AssertionError(f"active member never became {active}: {seen}")

            first = await wait_for("eth0")
            assert first["team"]["state"] == "up" and first["usage"] == {"cpu_usage": 0.5}
            began = time.monotonic()
            status.write_text(json.dumps(daemon_status("eth1", eth0="down", failovers=1)))
            moved = await wait_for("eth1")
            assert time.monotonic() - began < 2.0
            assert moved["team"]["state"] == "degraded"
            assert moved["nics"] == {"eth0": "down", "eth1": "up"}
            assert {m["name"]: m["state"] for m in moved["team"]["members"]} == {"eth0": "down", "eth1": "up"}
            assert moved["team"]["failovers"] == 1
            stop.set()
            await asyncio.wait_for(task, 2)
            assert await merge_observed(store, "lab", "host1", {"guests": ["b"]})
            doc = await store.get_json(keys.host_observed("lab", "host1"))
            assert doc["guests"] == ["b"] and doc["teams"]["team0"]["active"] == "eth1"
            # a dead host's last report is not believed: no agent presence → links from the host state
            await store.delete(keys.host_alive("lab", "host1"))
            raw = await snapshot.read_raw(store, "lab")
            host = next(h for h in snapshot.build(raw, "lab")["hosts"] if h["name"] == "host1")
            assert host["state"] == "down" and {n["state"] for n in host["nics"]} == {"down"}
            assert host["teams"][0]["state"] == "down" and host["teams"][0]["active"] is None
        finally:
            await store.close()

    asyncio.run(go())
