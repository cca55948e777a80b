"""``/api/v1/patch`` on the real app (starlette TestClient runs the lifespan) against a seeded
SQLite store: tokens (401 without, 403 for the viewer on every mutation), a dry-run plan and a
refused one, bad options refused with the field named and nothing started, a rollout started
through the API and aborted while its patcher runs, and a failed rollout aborted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from nonstop.api.app import create_app
from nonstop.api.auth import ensure_tokens
from nonstop.core.patching.steps import Step, StepResult, Tick, new_rollout, transition
from nonstop.store import keys

from .seeded import CLUSTER, intent_requests, read, rollouts, save_rollout, seed, write

pytestmark = pytest.mark.timeout(120)


def _client(tmp_path: Path, spread: str = "soft") -> tuple[TestClient, str, dict[str, dict[str, str]]]:
    url = seed(tmp_path / "s.db", spread)
    tokens = ensure_tokens(tmp_path / "tokens.json")
    headers = {role: {"Authorization": f"Bearer {getattr(tokens, role)}"} for role in ("admin", "viewer")}
    return TestClient(create_app(url, CLUSTER, tmp_path / "tokens.json")), url, headers


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, str, dict[str, dict[str, str]]]]:
    client, url, headers = _client(tmp_path)
    with client:
        yield client, url, headers


def _events(url: str, kind: str) -> list[dict[str, Any]]:
    from nonstop.store import open_store
    from nonstop.store.events import read_events

    async def go() -> list[dict[str, Any]]:
        store = open_store(url)
        try:
            return [e.data() for e in await read_events(store, CLUSTER) if e.kind == kind]
        finally:
            await store.close()

    import asyncio

    return asyncio.run(go())


def test_tokens_and_roles(api: tuple[TestClient, str, dict[str, dict[str, str]]]) -> None:
    client, url, h = api
    assert client.get("/api/v1/patch").status_code == 401
    r = client.get("/api/v1/patch", headers=h["viewer"])
    assert r.status_code == 200 and r.json()["rollout"] is None and r.json()["runner"]["here"] is False
    for path, body in [("/api/v1/patch", {"to": "L2"}), ("/api/v1/patch", {"to": "L2", "dry_run": True}),
                       ("/api/v1/patch/resume", None), ("/api/v1/patch/abort", None)]:
        assert client.post(path, json=body).status_code == 401, path
        r = client.post(path, json=body, headers=h["viewer"])
        assert r.status_code == 403 and "admin token" in r.text, (path, r.text)
    assert rollouts(url) == []


def test_dry_run_plans_and_writes_nothing(api: tuple[TestClient, str, dict[str, dict[str, str]]]) -> None:
    client, url, h = api
    r = client.post("/api/v1/patch", json={"to": "L2", "dry_run": True}, headers=h["admin"])
    assert r.status_code == 200, r.text
    plan = r.json()["plan"]
    assert plan["ok"] and plan["batches"] == [["h1"], ["h2"], ["h3"]] and plan["target"] == "L2"
    assert all(m["to"] != "h1" for m in plan["moves"]["h1"])
    r = client.post("/api/v1/patch", json={"to": "L2", "dry_run": True, "hosts": ["h3", "h1"], "max_unavailable": 2},
                    headers=h["admin"])
    assert r.json()["plan"]["batches"] == [["h1"], ["h3"]]  # both run a db replica: never one batch
    assert rollouts(url) == []


def test_a_refused_plan_is_explained_and_not_started(tmp_path: Path) -> None:
    client, url, h = _client(tmp_path, spread="hard")
    with client:
        r = client.post("/api/v1/patch", json={"to": "L2", "dry_run": True}, headers=h["admin"])
        assert r.status_code == 200 and not r.json()["plan"]["ok"]
        assert any("HA headroom: db-0 cannot leave h1" in why for why in r.json()["plan"]["refused"])
        r = client.post("/api/v1/patch", json={"to": "L2"}, headers=h["admin"])
        assert r.status_code == 409 and "the planner refuses" in r.json()["detail"], r.text
        assert client.get("/api/v1/patch", headers=h["viewer"]).json()["runner"]["here"] is False
    assert rollouts(url) == []


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"dry_run": True}, 422, "to"),
    ({"to": "L 2!"}, 422, "to"),
    ({"to": "L2", "max_unavailable": 0}, 422, "max_unavailable"),
    ({"to": "L2", "timeout": -1}, 422, "timeout"),
    ({"to": "L2", "simulate": "explode"}, 422, "simulate"),
    ({"to": "L2", "hosts": []}, 422, "hosts"),
    ({"to": "L2", "max_unavialable": 2}, 422, "max_unavialable"),
    ({"to": "L2", "hosts": ["h1", "h9"]}, 404, "hosts"),
])
def test_a_bad_option_names_the_field_and_starts_nothing(api: tuple[TestClient, str, dict[str, dict[str, str]]],
                                                        body: dict[str, Any], status: int, field: str) -> None:
    client, url, h = api
    r = client.post("/api/v1/patch", json=body, headers=h["admin"])
    assert r.status_code == status, r.text
    doc = r.json()
    named = doc.get("field") == field or any(field in e.get("loc", []) for e in doc.get("detail", [])
                                             if isinstance(e, dict))
    assert named, json.dumps(doc)
    assert rollouts(url) == []
    assert client.get("/api/v1/patch", headers=h["viewer"]).json()["runner"]["here"] is False


def test_started_rollout_runs_in_the_api_and_abort_stops_it(api: tuple[TestClient, str, dict[str, dict[str, str]]]) -> None:
    """No agent answers in the seeded store, so h1's pre-check keeps waiting (30 s grace): the
    abort reaches the patcher the API runs through the store, stops it, and h1 is left as it was."""
    client, url, h = api
    r = client.post("/api/v1/patch", json={"to": "L2", "command": "true", "timeout": 30}, headers=h["admin"])
    assert r.status_code == 202, r.text
    assert r.json()["rollout"]["target"] == "L2" and r.json()["rollout"]["command"] == "true"
    deadline = time.monotonic() + 20
    while True:
        doc = client.get("/api/v1/patch", headers=h["viewer"]).json()
        if doc["runner"]["lock"] and doc["rollout"]["hosts"]["h1"]["step"] == "precheck":
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)
    assert doc["runner"]["here"] is True and doc["report"]["hosts"][0]["host"] == "h1"
    again = client.post("/api/v1/patch", json={"to": "L3"}, headers=h["admin"])
    assert again.status_code == 409, again.text
    assert client.post("/api/v1/patch/resume", headers=h["admin"]).status_code == 409  # it is running
    began = time.monotonic()
    r = client.post("/api/v1/patch/abort", headers=h["admin"])
    assert r.status_code == 200, r.text
    assert time.monotonic() - began < 10
    assert r.json()["rollout"]["status"] == "aborted"
    assert {p["step"] for p in r.json()["rollout"]["hosts"].values()} == {"aborted"}
    deadline = time.monotonic() + 10
    while client.get("/api/v1/patch", headers=h["viewer"]).json()["runner"]["here"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    doc = client.get("/api/v1/patch", headers=h["viewer"]).json()
    assert doc["runner"]["error"] is None and doc["runner"]["lock"] is None
    assert read(url, keys.host_desired(CLUSTER, "h1")) is None  # never put in maintenance
    assert intent_requests(url) == []  # nor asked to leave it
    stored = rollouts(url)
    assert len(stored) == 1 and stored[0]["status"] == "aborted", stored
    assert stored[0]["rollout_id"].startswith("patch-rollout-") and stored[0]["kind"] == "patch-rollout"
    assert read(url, keys.op_abort(CLUSTER, stored[0]["rollout_id"])) is None
    assert read(url, keys.op_lock(CLUSTER, stored[0]["rollout_id"])) is None
    assert [e["by"] for e in _events(url, "patch-requested")] == ["admin", "admin"]  # start, abort
    assert _events(url, "patch-aborted")


def test_a_failed_rollout_is_reported_then_aborted(api: tuple[TestClient, str, dict[str, dict[str, str]]]) -> None:
    client, url, h = api
    r, _ = transition(new_rollout("patch-rollout-0123456789ab", "L2", (("h1",), ("h2",), ("h3",)), 0.0,
                                  levels={"h1": "L1", "h2": "L1", "h3": "L1"}), Tick(), 0.0)
    while r.hosts["h1"].step is not Step.DONE:
        r, _ = transition(r, StepResult("h1", r.hosts["h1"].step, ok=True), 1.0)
    while r.hosts["h2"].step is not Step.PATCH:
        r, _ = transition(r, StepResult("h2", r.hosts["h2"].step, ok=True), 2.0)
    r, _ = transition(r, StepResult("h2", Step.PATCH, ok=False, error="exit code 3", output="disk full"), 3.0)
    save_rollout(url, r)
    write(url, keys.host_desired(CLUSTER, "h2"), {"state": "maintenance", "evacuate": False})  # as the controller did
    doc = client.get("/api/v1/patch", headers=h["viewer"]).json()
    assert doc["rollout"]["status"] == "failed" and doc["report"]["complete"] is False
    h2 = next(x for x in doc["report"]["hosts"] if x["host"] == "h2")
    assert h2["failed_step"] == "patch" and h2["error"] == "exit code 3" and h2["output"] == "disk full"
    r2 = client.post("/api/v1/patch", json={"to": "L3"}, headers=h["admin"])
    assert r2.status_code == 409 and "resume or abort" in r2.json()["detail"]
    r2 = client.post("/api/v1/patch/abort", headers=h["admin"])
    assert r2.status_code == 200 and r2.json()["rollout"]["status"] == "aborted", r2.text
    assert read(url, keys.host_desired(CLUSTER, "h2"))["state"] == "maintenance"  # the operator decides
    assert intent_requests(url) == []  # no intent to leave maintenance for a host whose patch failed
    assert client.post("/api/v1/patch/resume", headers=h["admin"]).status_code == 409
    assert client.post("/api/v1/patch/abort", headers=h["admin"]).status_code == 409
