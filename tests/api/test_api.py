"""The REST API against a seeded SQLite store and the real app (starlette TestClient runs the lifespan);
maintenance and migration answered by the controller stand-in (the real ``decide`` and ``Applier``)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nonstop.api.app import create_app
from nonstop.api.auth import ensure_tokens
from nonstop.api.chaos import LabChaos
from nonstop.specfile import load_spec

from .seeding import CLUSTER, LAB_YAML, ControllerStandIn, StoreLab, tokens


@pytest.fixture
def client(store_url: str, token_file: Path, controller: ControllerStandIn):
    with TestClient(create_app(store_url, CLUSTER, token_file)) as c:
        yield c


def h(token_file: Path, role: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens(token_file)[role]}"}


def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tokens.json"
    first = ensure_tokens(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.admin != first.viewer and len(first.admin) >= 32
    assert ensure_tokens(path) == first
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        ensure_tokens(path)


def test_no_token_is_401_and_viewer_cannot_mutate(client: TestClient, token_file: Path) -> None:
    assert client.get("/api/v1/hosts").status_code == 401
    assert client.get("/api/v1/hosts", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/v1/hosts", params={"token": tokens(token_file)["admin"]}).status_code == 401
    assert client.get("/api/v1/hosts", headers=h(token_file, "viewer")).status_code == 200
    for path, body in [("/api/v1/hosts/host1/maintenance", {"action": "enter"}),
                       ("/api/v1/guests/web-0/migrate", {"to": "host2"}),
                       ("/api/v1/apply", {"spec": LAB_YAML.read_text()}),
                       ("/api/v1/chaos/fail", {"target": "host", "name": "host1"}),
                       ("/api/v1/chaos/heal", None)]:
        assert client.post(path, json=body).status_code == 401, path
        r = client.post(path, json=body, headers=h(token_file, "viewer"))
        assert r.status_code == 403, (path, r.text)
    assert client.get("/api/v1/whoami", headers=h(token_file, "viewer")).json()["role"] == "viewer"
    assert client.get("/api/v1/events/stream").status_code == 401
    assert client.get("/api/v1/events/stream", params={"token": "wrong"}).status_code == 401
    assert client.get("/metrics").status_code == 200  # scrapers need no token (127.0.0.1 by default)


def test_reads_agree_with_seeded_state(client: TestClient, token_file: Path) -> None:
    hosts = client.get("/api/v1/hosts", headers=h(token_file)).json()
    assert [x["name"] for x in hosts] == ["host1", "host2", "host3"]
    assert all(x["state"] == "up" for x in hosts)
    guests = client.get("/api/v1/guests", headers=h(token_file)).json()
    assert len(guests) == 6 and all(g["state"] == "running" for g in guests)
    on_hosts = sorted(g for x in hosts for g in x["guests"])
    assert on_hosts == sorted(g["name"] for g in guests)
    host1 = hosts[0]
    assert host1["capacity"]["cpus"] == 2 and host1["capacity"]["effective_cpus"] == 8.0
    assert host1["allocated"]["vcpus"] == sum(g["vcpus"] for g in guests if g["host"] == "host1")
    assert hosts[2]["components"]["groups"]["power"] == {"state": "degraded", "working": 1, "total": 2,
                                                         "failed": ["PSU2"]}
    components = client.get("/api/v1/components", headers=h(token_file)).json()
    assert [(c["host"], c["health"]) for c in components] == [("host1", "healthy"), ("host2", "healthy"),
                                                               ("host3", "degraded")]
    assert [(g["group"], g["state"], g["working"], g["total"]) for g in components[2]["groups"]] == [
        ("power", "degraded", 1, 2), ("network", "redundant", 2, 2), ("storage", "redundant", 2, 2),
        ("cooling", "redundant", 2, 2)]
    teams = client.get("/api/v1/teams", headers=h(token_file)).json()
    assert {(t["host"], t["name"], t["active"]) for t in teams} == {(f"host{i}", "team0", "eth0") for i in (1, 2, 3)}
    services = client.get("/api/v1/services", headers=h(token_file)).json()
    assert {s["name"]: len(s["backends"]) for s in services} == {"web": 3, "api": 3}
    networks = client.get("/api/v1/networks", headers=h(token_file)).json()
    assert [n["name"] for n in networks] == ["prod", "nat0", "iso"]
    status = client.get("/api/v1/status", headers=h(token_file)).json()
    assert status["healthy"] is True and status["running"] == 6
    events = client.get("/api/v1/events", headers=h(token_file)).json()
    assert [e["kind"] for e in events] == ["guest-placed", "host-state"]


def test_describe_guest_explains_placement(client: TestClient, token_file: Path) -> None:
    r = client.get("/api/v1/describe/guest/web-1", headers=h(token_file))
    assert r.status_code == 200, r.text
    body = r.json()
    placement = body["placement"]
    assert placement["available"] and placement["explanation"]["filters"]
    assert placement["would_place_on"] in ("host1", "host2", "host3")
    assert [f["filter"] for f in placement["explanation"]["filters"]][0] == "HostStateFilter"
    assert client.get("/api/v1/describe/guest/nope-9", headers=h(token_file)).status_code == 404
    assert client.get("/api/v1/describe/planet/x", headers=h(token_file)).status_code == 422
    team = client.get("/api/v1/describe/team/host2/team0", headers=h(token_file)).json()
    assert team["record"]["mode"] == "active-backup"


def test_maintenance_and_migrate_ask_the_controller(client: TestClient, token_file: Path) -> None:
    r = client.post("/api/v1/hosts/host2/maintenance", json={"action": "enter", "reason": "patch"},
                    headers=h(token_file))
    assert r.status_code == 200, r.text
    entered = r.json()
    assert entered["status"] == "done" and entered["changed"] is True and entered["state"] == "maintenance"
    hosts = {x["name"]: x for x in client.get("/api/v1/hosts", headers=h(token_file)).json()}
    assert hosts["host2"]["state"] == "maintenance"
    assert hosts["host2"]["desired"]["by"] == "api:admin" and hosts["host2"]["desired"]["reason"] == "patch"
    again = client.post("/api/v1/hosts/host2/maintenance", json={"action": "enter"}, headers=h(token_file)).json()
    assert again["status"] == "done" and again["changed"] is False and "already" in again["message"]
    guests = {g["name"]: g for g in client.get("/api/v1/guests", headers=h(token_file)).json()}
    # A process guest moves cold only: asking for live is refused before anything is written.
    process = next(g for g in guests.values() if g["kind"] == "process" and g["host"] != "host2")
    elsewhere = next(x for x in ("host1", "host3") if x != process["host"])
    r = client.post(f"/api/v1/guests/{process['name']}/migrate", json={"to": elsewhere}, headers=h(token_file))
    assert r.status_code == 409 and r.json()["field"] == "mode", r.text
    assert "only VMs migrate live" in r.json()["detail"] and "cold" in r.json()["detail"]
    # A target in maintenance fails a placement filter: 409 in the filter's words.
    vm = next(g for g in guests.values() if g["kind"] == "vm" and g["host"] != "host2")
    r = client.post(f"/api/v1/guests/{vm['name']}/migrate", json={"to": "host2"}, headers=h(token_file))
    assert r.status_code == 409 and r.json()["field"] == "to", r.text
    assert r.json()["detail"] == f"{vm['name']} does not fit on host2: removed by HostStateFilter"
    # Live: accepted, the controller asks the agents (migrate_to); the guest stays until they hand it over.
    target = next(x for x in ("host1", "host3") if x != vm["host"])
    r = client.post(f"/api/v1/guests/{vm['name']}/migrate", json={"to": target}, headers=h(token_file))
    assert r.status_code == 200, r.text
    live = r.json()
    assert (live["status"], live["target"], live["from"], live["mode"]) == ("accepted", target, vm["host"], "live")
    after = {g["name"]: g for g in client.get("/api/v1/guests", headers=h(token_file)).json()}
    assert after[vm["name"]]["migrate_to"] == target and after[vm["name"]]["host"] == vm["host"]
    # Cold: accepted, reassigned at once under a new fencing epoch.
    r = client.post(f"/api/v1/guests/{process['name']}/migrate", json={"to": elsewhere, "mode": "cold"},
                    headers=h(token_file))
    assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
    after = {g["name"]: g for g in client.get("/api/v1/guests", headers=h(token_file)).json()}
    assert after[process["name"]]["host"] == elsewhere and after[process["name"]]["epoch"] == process["epoch"] + 1
    r = client.post("/api/v1/hosts/host2/maintenance", json={"action": "exit"}, headers=h(token_file))
    assert r.status_code == 200 and r.json()["status"] == "done" and r.json()["state"] == "up", r.text
    # Every request is an intent with the controller's outcome, newest first.
    listed = client.get("/api/v1/intents", headers=h(token_file, "viewer")).json()
    assert [(i["kind"], i["status"]) for i in listed] == [
        ("maintenance", "done"), ("migrate", "accepted"), ("migrate", "accepted"), ("maintenance", "done"),
        ("maintenance", "done")]
    assert {i["requester"] for i in listed} == {"api:admin"}
    one = client.get(f"/api/v1/intents/{live['intent']}", headers=h(token_file)).json()
    assert one["guest"] == vm["name"] and one["live"] is True and one["outcome"]["target"] == target
    assert client.get("/api/v1/intents/migrate-nope", headers=h(token_file)).status_code == 404
    events = client.get("/api/v1/events", headers=h(token_file)).json()
    asked = [(e["kind"], e["intent"]) for e in events if e.get("source") == "api"]
    assert asked == [("maintenance-requested", entered["intent"]), ("maintenance-requested", again["intent"]),
                     ("migrate-requested", live["intent"]), ("migrate-requested", listed[1]["id"]),
                     ("maintenance-requested", listed[0]["id"])]
    answered = [e for e in events if e["kind"].startswith("intent-")]
    assert {(e["kind"], e["intent"]) for e in answered} == {(f"intent-{i['status']}", i["id"]) for i in listed}
    assert ("maintenance", "host2") in [(e["kind"], e["subject"]) for e in events]  # the controller's own record
    assert client.post("/api/v1/hosts/host9/maintenance", json={"action": "enter"},
                       headers=h(token_file)).status_code == 404
    r = client.post("/api/v1/hosts/host1/maintenance", json={"action": "sideways"}, headers=h(token_file))
    assert r.status_code == 422 and "action" in json.dumps(r.json())
    r = client.post(f"/api/v1/guests/{vm['name']}/migrate", json={"to": "host1", "mode": "warp"}, headers=h(token_file))
    assert r.status_code == 422 and "mode" in json.dumps(r.json())


def test_without_an_answer_the_request_is_pending(store_url: str, token_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from nonstop.api import actions

    monkeypatch.setattr(actions, "OUTCOME_WAIT", 0.2)
    with TestClient(create_app(store_url, CLUSTER, token_file)) as client:  # no controller answers
        r = client.post("/api/v1/hosts/host1/maintenance", json={"action": "enter"}, headers=h(token_file))
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "pending" and r.json()["state"] == "maintenance"
        intent = client.get(f"/api/v1/intents/{r.json()['intent']}", headers=h(token_file)).json()
        assert (intent["kind"], intent["host"], intent["status"], intent["outcome"]) == (
            "maintenance", "host1", "pending", None)
        hosts = {x["name"]: x for x in client.get("/api/v1/hosts", headers=h(token_file)).json()}
        assert hosts["host1"]["state"] == "up"  # the API wrote an intent, nothing the controller owns
        r = client.post("/api/v1/guests/web-0/migrate", json={"to": "host3", "mode": "cold"}, headers=h(token_file))
        assert r.status_code == 202 and r.json()["status"] == "pending", r.text


async def test_a_refusal_is_409_with_the_controllers_words(store_url: str) -> None:
    from nonstop.api import actions
    from nonstop.store import intents, keys, open_store
    from nonstop.store.intents import IntentOutcome

    store = open_store(store_url)

    async def refuse() -> None:
        while True:
            for kv in await store.list(keys.intents_prefix(CLUSTER)):
                if kv.key.endswith("/request"):
                    req = intents.parse_request(kv.value)
                    assert req is not None
                    out = IntentOutcome(id=req.id, status="refused", message="web-0 is being failed over",
                                        updated_at=time.time())
                    await store.put_json(intents.outcome_key(CLUSTER, req.id), intents.dump(out))
                    return
            await asyncio.sleep(0.02)

    try:
        from nonstop.api import snapshot

        doc = snapshot.build(await snapshot.read_raw(store, CLUSTER), CLUSTER)
        refusing = asyncio.create_task(refuse())
        with pytest.raises(actions.Conflict) as caught:
            await actions.request_migration(store, CLUSTER, "web-0", "host2", "admin", doc)
        await refusing
        assert caught.value.body() == {"detail": "web-0 is being failed over", "field": "to",
                                       "intent": caught.value.intent}
        assert caught.value.intent and caught.value.intent.startswith("migrate-")
    finally:
        await store.close()


def test_apply_validates_fully_and_is_compare_and_set(client: TestClient, token_file: Path) -> None:
    before = client.get("/api/v1/spec", headers=h(token_file)).json()
    broken = LAB_YAML.read_text().replace("replicas: 3\n    vcpus: 1\n    max_vcpus: 2", "replicas: 3\n    vcpus: lots\n    max_vcpus: 2")
    r = client.post("/api/v1/apply", json={"spec": broken, "filename": "lab.yaml"}, headers=h(token_file))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "guests[0].vcpus" and "lab.yaml:" in r.json()["detail"]
    assert client.get("/api/v1/spec", headers=h(token_file)).json() == before
    other = LAB_YAML.read_text().replace("cluster: lab", "cluster: other")
    r = client.post("/api/v1/apply", json={"spec": other}, headers=h(token_file))
    assert r.status_code == 422 and r.json()["field"] == "cluster"
    same = client.post("/api/v1/apply", json={"spec": LAB_YAML.read_text()}, headers=h(token_file)).json()
    assert same["applied"] is False
    grown = LAB_YAML.read_text().replace("    replicas: 3\n    vcpus: 1\n    memory: 128MiB", "    replicas: 4\n    vcpus: 1\n    memory: 128MiB")
    r = client.post("/api/v1/apply", json={"spec": grown}, headers=h(token_file))
    assert r.status_code == 200 and r.json()["applied"] is True, r.text
    assert r.json()["changes"] == ["guests: ~api (replicas)"]
    assert client.get("/api/v1/spec", headers=h(token_file)).json()["spec"]["guests"][1]["replicas"] == 4
    last = [e for e in client.get("/api/v1/events", headers=h(token_file)).json() if e.get("source") == "api"][-1]
    assert last["kind"] == "spec-applied" and last["by"] == "admin"


def test_chaos_without_lab_is_409(client: TestClient, token_file: Path) -> None:
    r = client.post("/api/v1/chaos/fail", json={"target": "host", "name": "host1"}, headers=h(token_file))
    assert r.status_code == 409 and "chaos needs the lab" in r.json()["detail"]
    assert client.post("/api/v1/chaos/heal", headers=h(token_file)).status_code == 409


def test_chaos_with_lab_and_stream(store_url: str, token_file: Path) -> None:
    lab = StoreLab(store_url)
    lab.delay = 0.0
    with TestClient(create_app(store_url, CLUSTER, token_file, lab=lab)) as client:
        r = client.post("/api/v1/chaos/fail", json={"target": "link", "name": "host1/eth7"}, headers=h(token_file))
        assert r.status_code == 404 and "eth0" in r.json()["detail"]
        r = client.post("/api/v1/chaos/fail", json={"target": "switch", "name": "sw0"}, headers=h(token_file))
        assert r.status_code == 409 and "fail_switch" in r.json()["detail"]
        on_host1 = [g["name"] for g in client.get("/api/v1/guests", headers=h(token_file)).json() if g["host"] == "host1"]
        assert on_host1
        with client.stream("GET", "/api/v1/events/stream", params={"token": tokens(token_file)["viewer"], "limit": 200}) as stream:
            r = client.post("/api/v1/chaos/fail", json={"target": "host", "name": "host1"}, headers=h(token_file))
            assert r.status_code == 200, r.text
            assert lab.calls == [("fail_host", ("host1",))]
            seen = []
            deadline = time.monotonic() + 10
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    seen.append(msg)
                    if msg.get("type") == "event" and msg["event"]["kind"] == "guest-moved":
                        break
                assert time.monotonic() < deadline
        kinds = [m["event"]["kind"] for m in seen if m.get("type") == "event"]
        assert kinds[0] == "chaos" and "host-dead" in kinds
        deadline = time.monotonic() + 10
        while True:
            hosts = {x["name"]: x for x in client.get("/api/v1/hosts", headers=h(token_file)).json()}
            if hosts["host1"]["state"] == "failed" and not hosts["host1"]["guests"]:
                break
            assert time.monotonic() < deadline, hosts["host1"]
            time.sleep(0.05)
        moved = {g["name"]: g for g in client.get("/api/v1/guests", headers=h(token_file)).json()}
        assert all(moved[g]["host"] in ("host2", "host3") and moved[g]["state"] == "running" for g in on_host1)
        metrics = client.get("/metrics").text
        assert 'nonstop_host_up{host="host1"} 0.0' in metrics
        assert "nonstop_failover_duration_seconds_count 1.0" in metrics


def test_chaos_on_components_goes_through_the_labs_methods(store_url: str, token_file: Path) -> None:
    lab = StoreLab(store_url)
    with TestClient(create_app(store_url, CLUSTER, token_file, lab=lab)) as client:
        r = client.post("/api/v1/chaos/fail", json={"target": "psu", "name": "host1/PSU9"}, headers=h(token_file))
        assert r.status_code == 404 and "PSU1" in r.json()["detail"] and not lab.calls
        r = client.post("/api/v1/chaos/fail", json={"target": "psu", "name": "host1/PSU1"}, headers=h(token_file))
        assert r.status_code == 200, r.text
        assert r.json()["result"] == {"host": "host1", "power": "On", "failed": ["psu/PSU1"]}
        r = client.post("/api/v1/chaos/fail", json={"target": "nic", "name": "host2/eth1"}, headers=h(token_file))
        assert r.status_code == 200, r.text
        assert lab.calls == [("fail_component", ("psu", "host1", "PSU1")), ("fail_component", ("nic", "host2", "eth1"))]
        assert lab.failed_components == {("host1", "psu", "PSU1"), ("host2", "nic", "eth1")}
        assert client.post("/api/v1/chaos/heal", headers=h(token_file)).status_code == 200
        assert not lab.failed_components


class PerHostLab:
    """The shape of ``LabCluster``'s chaos surface (``heal`` per host): every call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def heal(self, host: str) -> None:
        self.calls.append(("heal", host))

    def fail_component(self, kind: str, host: str, name: str) -> dict[str, str]:
        self.calls.append(("fail_component", kind, host, name))
        return {"host": host}

    def repair_component(self, kind: str, host: str, name: str) -> dict[str, str]:
        self.calls.append(("repair_component", kind, host, name))
        return {"host": host}


def test_heal_repairs_the_components_failed_through_the_api() -> None:
    spec, lab = load_spec(LAB_YAML), PerHostLab()
    chaos = LabChaos(lab)
    chaos.run("fail_drive", ("host2", "Disk0"), spec)
    assert chaos.faults()["components"] == ["host2/drive/Disk0"]
    assert chaos.run("heal", (), spec)["errors"] == []
    assert lab.calls == [("fail_component", "drive", "host2", "Disk0"), ("heal", "host1"), ("heal", "host2"),
                         ("heal", "host3"), ("repair_component", "drive", "host2", "Disk0")]
    assert chaos.faults()["components"] == []


def test_metrics_text(client: TestClient) -> None:
    text = client.get("/metrics").text
    for name in ("nonstop_host_up", "nonstop_host_effective_capacity", "nonstop_guest_running",
                 "nonstop_team_member_up", "nonstop_team_member_active", "nonstop_service_backends", "nonstop_heartbeat_gap_seconds_bucket",
                 "nonstop_failover_duration_seconds_bucket"):
        assert name in text, name
    assert 'nonstop_host_allocated{host="host1",resource="cpu"}' in text
    assert 'nonstop_team_member_active{host="host2",member="eth0",team="team0"} 1.0' in text
    assert 'nonstop_host_component_working{group="power",host="host3"} 1.0' in text


def test_status_warns_while_patch_levels_differ(client: TestClient, token_file: Path, store_url: str) -> None:
    import asyncio

    from nonstop.store import keys, open_store

    assert client.get("/api/v1/status", headers=h(token_file)).json()["warnings"] == []

    async def set_level(host: str, level: str) -> None:
        store = open_store(store_url)
        try:
            key = keys.host_observed(CLUSTER, host)
            record = await store.get_json(key) or {}
            record["patch_level"] = level
            await store.put_json(key, record)
        finally:
            await store.close()

    for host in ("host1", "host2", "host3"):
        asyncio.run(set_level(host, "1"))
    assert client.get("/api/v1/status", headers=h(token_file)).json()["warnings"] == []
    asyncio.run(set_level("host2", "2"))
    warnings = client.get("/api/v1/status", headers=h(token_file)).json()["warnings"]
    assert warnings == ["patch levels differ: host1=1, host2=2, host3=1"]
