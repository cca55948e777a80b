"""The lab BMC over HTTP: auth, sessions, components, sushy inventory, and DMTF's Service Validator."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from nonstop.bmc.inventory import read_inventory, redfish_session
from nonstop.bmc.model import ComponentKind
from nonstop.bmc.resources import render
from nonstop.bmc.server import BmcConfig, BmcHooks, RunningBmc, start_bmc
from nonstop.core.ha.hardware import ComponentGroup, HardwareInventory

from .conftest import host_hardware

VALIDATOR = Path(sys.executable).with_name("rf_service_validator")


def http(method: str, url: str, body: dict[str, Any] | None = None, auth: bool = True,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic YWRtaW46cGFzc3dvcmQ=")  # admin:password
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(raw) if raw and "json" in resp.headers.get("Content-Type", "") else raw
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read() or b"{}")


async def call(*args: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    return await asyncio.to_thread(http, *args, **kwargs)


async def test_auth_basic_and_sessions(running_bmc: RunningBmc) -> None:
    url = running_bmc.url
    status, headers, root = await call("GET", f"{url}/redfish/v1/", auth=False)
    assert status == 200 and root["Systems"]["@odata.id"] == "/redfish/v1/Systems"
    assert headers["odata-version"] == "4.0"
    status, headers, err = await call("GET", f"{url}/redfish/v1/Systems", auth=False)
    assert status == 401 and "www-authenticate" in headers and "error" in err
    status, _, _ = await call("POST", f"{url}/redfish/v1/SessionService/Sessions",
                              {"UserName": "admin", "Password": "wrong"}, auth=False)
    assert status == 401
    status, headers, session = await call("POST", f"{url}/redfish/v1/SessionService/Sessions",
                                          {"UserName": "admin", "Password": "password"}, auth=False)
    assert status == 201 and session["UserName"] == "admin"
    token, location = headers["x-auth-token"], headers["location"]
    status, _, systems = await call("GET", f"{url}/redfish/v1/Systems", auth=False, headers={"X-Auth-Token": token})
    assert status == 200 and systems["Members@odata.count"] == 1
    assert (await call("DELETE", f"{url}{location}", auth=False, headers={"X-Auth-Token": token}))[0] == 204
    assert (await call("GET", f"{url}/redfish/v1/Systems", auth=False, headers={"X-Auth-Token": token}))[0] == 401
    assert (await call("GET", f"{url}/redfish/v1/Nothing"))[0] == 404
    assert (await call("PATCH", f"{url}/redfish/v1/Systems/h1", {}))[0] == 405
    status, _, err = await call("POST", f"{url}/redfish/v1/Systems/h1/Actions/ComputerSystem.Reset", {"ResetType": "Explode"})
    assert status == 400 and "ResetType" in err["error"]["message"]


async def test_components_fail_and_repair_through_the_admin_path() -> None:
    nic_events: list[tuple[str, bool]] = []

    async def on_nic(nic: str, up: bool) -> None:
        nic_events.append((nic, up))

    running = await start_bmc(BmcConfig(host_hardware(), None), BmcHooks(on_nic=on_nic))
    try:
        base = f"{running.url}/nonstop/v1/components"
        assert (await call("POST", f"{base}/nic/eth1/fail", auth=False))[0] == 401
        status, _, state = await call("POST", f"{base}/nic/eth1/fail")
        assert status == 200 and state["failed"] == ["nic/eth1"] and state["health"]["network"] == "Warning"
        assert nic_events == [("eth1", False)]
        await call("POST", f"{base}/drive/Disk0/fail")
        await call("POST", f"{base}/psu/PSU2/fail")
        await call("POST", f"{base}/fan/Fan1/fail")
        assert (await call("POST", f"{base}/psu/PSU9/fail"))[0] == 404
        assert (await call("POST", f"{base}/fan/F1/fail"))[0] == 404

        def read() -> HardwareInventory:
            with redfish_session(running.url, "admin", "password") as root:
                return read_inventory(root, "h1")

        inventory = await asyncio.to_thread(read)
        by_name = {c.name: c for c in inventory.components}
        assert by_name["eth1/1"].failed and by_name["eth1/1"].detail("LinkStatus") == "LinkDown"
        assert not by_name["eth0/1"].failed
        assert by_name["Disk0"].failed and by_name["Mirror"].health == "Warning"
        assert by_name["Mirror"].detail("RAIDType") == "RAID1"
        assert by_name["PSU2"].failed and not by_name["PSU1"].failed
        assert {c.name for c in inventory.failed()} == {"eth1/1", "Disk0", "PSU2", "Fan1"}
        assert by_name["Fan2"].detail("SpeedPercent") == "40.0"
        assert by_name["CPUTemp"].detail("ReadingCelsius") == "60.0"  # one fan down: hotter
        assert len(inventory.group(ComponentGroup.COOLING)) == 4 and inventory.missing == ()
        assert len(inventory.group(ComponentGroup.POWER)) == 2
        assert inventory.power_state == "On" and inventory.health == "Warning"

        await call("POST", f"{base}/nic/eth1/repair")
        assert nic_events == [("eth1", False), ("eth1", True)]
        assert running.bmc.hw.network_health.value == "OK"
        assert running.bmc.hw.component(ComponentKind.NIC, "eth1").failed is False
    finally:
        await running.stop()


async def run_validator(url: str, csdl: Path, logdir: Path, auth: str = "Session") -> tuple[dict[str, int], str]:
    proc = await asyncio.create_subprocess_exec(
        str(VALIDATOR), "--rhost", url, "--schema_directory", str(csdl), "--skipschema",
        "--logdir", str(logdir), "--user", "admin", "--password", "password", "--authtype", auth,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    match = re.search(r"PASS\s*\|\s*WARN\s*\|\s*FAIL\s*\|\s*NOT TESTED\s*\|\s*\n[+\-]+\n\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", text)
    assert match, text[-3000:]
    counts = dict(zip(("pass", "warn", "fail"), map(int, match.groups()), strict=True))
    return counts, text


@pytest.mark.slow
async def test_service_validator_zero_failures(csdl_dir: Path, tmp_path: Path) -> None:
    if not VALIDATOR.exists():
        pytest.skip("redfish-service-validator is not installed (pip install -e '.[dev]')")
    healthy = await start_bmc(BmcConfig(host_hardware(), None))
    # An event subscription, so EventDestination is validated too (nothing changes: no delivery).
    healthy.bmc.subscriptions["1a2b"] = {"Destination": "http://127.0.0.1:9/events/h1", "Context": "validator"}
    # A second BMC degraded and powered off: other health words, states and link status.
    degraded = await start_bmc(BmcConfig(host_hardware(), None))
    try:
        for kind, name in ((ComponentKind.PSU, "PSU1"), (ComponentKind.DRIVE, "Disk1"), (ComponentKind.NIC, "eth0"),
                           (ComponentKind.FAN, "Fan2")):
            await degraded.bmc.set_component(kind, name, failed=True)
        await degraded.bmc.reset("ForceOff")
        # Both validator runs at once: two processes, two cores.
        (counts, text), (degraded_counts, degraded_text) = await asyncio.gather(
            run_validator(healthy.url, csdl_dir, tmp_path / "healthy"),
            run_validator(degraded.url, csdl_dir, tmp_path / "degraded", auth="Basic"),
        )
        assert counts["fail"] == 0, text[-4000:]
        assert counts["warn"] == 0, text[-4000:]
        assert counts["pass"] > 300
        validated = {u.rstrip("/") for u in re.findall(r"^Validating (\S+?)\.\.\.$", text, re.M)}
        expected = set(render(healthy.bmc.hw, {}, "admin", healthy.bmc.subscriptions)) - {"/redfish/v1"}
        # every resource we serve was reached and checked (sessions come and go)
        assert expected - validated == set()
        assert degraded_counts["fail"] == 0, degraded_text[-4000:]
    finally:
        await healthy.stop()
        await degraded.stop()


async def test_event_subscriptions_push_component_changes(running_bmc: RunningBmc) -> None:
    """EventService: a subscriber gets a ResourceChanged Event naming the failed part; only
    local/lab destinations are accepted; DELETE unsubscribes; a dead destination is dropped."""
    from nonstop.components.events import EventListener, listening_socket

    got: list[tuple[str, dict[str, Any]]] = []
    arrived = asyncio.Event()

    def on_event(path: str, payload: dict[str, Any]) -> None:
        got.append((path, payload))
        arrived.set()

    listener = await EventListener(listening_socket(), on_event).start()
    subs = f"{running_bmc.url}/redfish/v1/EventService/Subscriptions"
    try:
        status, _, service = await call("GET", f"{running_bmc.url}/redfish/v1/EventService")
        assert status == 200 and service["Subscriptions"]["@odata.id"] == "/redfish/v1/EventService/Subscriptions"
        status, _, _ = await call("POST", subs, {"Destination": "http://192.0.2.1/events/h1", "Protocol": "Redfish"})
        assert status == 400  # nowhere but this machine and the lab network
        status, headers, made = await call("POST", subs, {"Destination": listener.destination("h1"),
                                                          "Protocol": "Redfish", "Context": "test"})
        assert status == 201 and made["Destination"] == listener.destination("h1") and made["Context"] == "test"
        location = headers["location"]
        status, _, listing = await call("GET", subs)
        assert listing["Members"] == [{"@odata.id": location}]
        await call("POST", f"{running_bmc.url}/nonstop/v1/components/psu/PSU1/fail")
        await asyncio.wait_for(arrived.wait(), 5)
        path, event = got[0]
        assert path == "h1" and event["Context"] == "test"
        record = event["Events"][0]
        assert record["MessageId"] == "ResourceEvent.1.3.ResourceChanged" and record["MessageSeverity"] == "Critical"
        assert record["OriginOfCondition"]["@odata.id"].endswith("/PowerSubsystem/PowerSupplies/PSU1")
        status, _, _ = await call("DELETE", f"{running_bmc.url}{location}")
        assert status == 204 and running_bmc.bmc.subscriptions == {}
        # A destination nobody listens on: dropped after the retry attempts.
        status, _, _ = await call("POST", subs, {"Destination": "http://127.0.0.1:9/events/h1"})
        assert status == 201
        await call("POST", f"{running_bmc.url}/nonstop/v1/components/psu/PSU1/repair")
        deadline = asyncio.get_running_loop().time() + 10
        while running_bmc.bmc.subscriptions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert running_bmc.bmc.subscriptions == {}
    finally:
        await listener.close()
