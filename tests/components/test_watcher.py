"""The hardware watcher against a real lab BMC (in-process, Redfish over HTTP) and the real
sushy-emulator: readings, store record, events, policy actions, metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from api.seeding import ControllerStandIn  # tests/api (a rootdir package)
from prometheus_client import CollectorRegistry, generate_latest

from nonstop.bmc.model import HostHardware
from nonstop.bmc.server import BmcConfig, RunningBmc, start_bmc
from nonstop.components.chaos import fail_component, parse_target, repair_component
from nonstop.components.metrics import ComponentCollector
from nonstop.components.watcher import HardwareWatcher, run_hardware_watcher
from nonstop.core.ha.hardware import ComponentGroup
from nonstop.core.spec import ClusterSpec
from nonstop.store import intents, keys, open_store
from nonstop.store.base import Store
from nonstop.store.events import read_events
from nonstop.store.state import put_spec


def spec(on_degraded: str = "evacuate", window: float = 0.6) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "cluster": "tcomp", "hosts": [{"name": "h1", "cpus": 2, "memory": "4GiB"}],
        "policies": {"components": {"on_degraded": on_degraded, "stability_window": window}},
    })


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """The cluster's store, with the controller's real decision path answering intents: the watcher
    asks for maintenance through an intent and the controller writes ``hosts/<h>/desired``."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    s = open_store(url)
    await put_spec(s, spec())
    with ControllerStandIn(url, "tcomp"):
        yield s
    await s.close()


async def operator_maintenance(store: Store, enter: bool) -> None:
    """What ``nonstop maintenance enter|exit`` does: an intent, answered by the controller."""
    req = await intents.submit(store, "tcomp", "maintenance", requester="api:admin", reason="operator", host="h1",
                               enter=enter, evacuate=False)
    outcome = await intents.wait_outcome(store, "tcomp", req.id, timeout=5.0)
    assert outcome is not None and outcome.status == "done", outcome


@pytest.fixture
async def bmc() -> AsyncIterator[RunningBmc]:
    running = await start_bmc(BmcConfig(HostHardware.from_spec(spec().host("h1")), None))
    yield running
    await running.stop()


async def until(what: str, check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def record(store: Store, key: str) -> dict[str, Any]:
    return await store.get_json(key) or {}


async def test_psu_failure_degrades_evacuates_and_repair_releases_after_window(store: Store, bmc: RunningBmc) -> None:
    stop = asyncio.Event()
    box: dict[str, HardwareWatcher] = {}
    registry = CollectorRegistry()
    task = asyncio.create_task(run_hardware_watcher(
        store, spec(), {"h1": bmc.url}, password="password", stop=stop, interval=0.2, registry=registry,
        watcher_ready=lambda w: box.setdefault("w", w)))
    ckey, dkey = keys.host_components("tcomp", "h1"), keys.host_desired("tcomp", "h1")
    try:
        first = await until("first reading", lambda: record(store, ckey))
        assert first["health"] == "healthy" and first["groups"]["power"] == {
            "state": "redundant", "working": 2, "total": 2, "failed": []}
        assert first["groups"]["storage"]["state"] == "redundant" and first["groups"]["network"]["total"] == 2

        failed_at = time.monotonic()
        await asyncio.to_thread(fail_component, bmc.url, "psu", "h1", "PSU1")
        degraded = await until("degraded", lambda: _health(store, ckey, "degraded"), timeout=2.0)
        took = time.monotonic() - failed_at
        assert took < 2.0 and degraded["groups"]["power"]["state"] == "degraded"
        assert degraded["placement"] == "no-new-guests" and degraded["policy"] == "acting"
        desired = await until("maintenance request", lambda: record(store, dkey))
        assert desired["state"] == "maintenance" and desired["evacuate"] is True and desired["by"] == "components"
        kinds = [(e.kind, e.subject) for e in await read_events(store, "tcomp")]
        assert ("component", "h1/power/PSU1") in kinds and ("host-health", "h1") in kinds
        assert ("component-alert", "h1") in kinds

        text = generate_latest(registry).decode()
        assert 'nonstop_host_component_health{health="degraded",host="h1"} 1.0' in text
        assert 'nonstop_component_up{group="power",host="h1",name="PSU1"} 0.0' in text

        repaired_at = time.monotonic()
        await asyncio.to_thread(repair_component, bmc.url, "psu", "h1", "PSU1")
        await until("healthy", lambda: _health(store, ckey, "healthy"))
        assert (await record(store, dkey))["state"] == "maintenance"  # still inside the stability window
        await until("released", lambda: _state(store, dkey, "up"), timeout=3.0)
        assert time.monotonic() - repaired_at >= 0.6

        # An operator's maintenance is never withdrawn by the watcher.
        await operator_maintenance(store, True)
        await asyncio.to_thread(fail_component, bmc.url, "drive", "h1", "Disk0")
        await until("storage degraded", lambda: _health(store, ckey, "degraded"))
        await asyncio.to_thread(repair_component, bmc.url, "drive", "h1", "Disk0")
        await until("healthy", lambda: _health(store, ckey, "healthy"))
        await asyncio.sleep(1.0)
        assert (await record(store, dkey)).get("by") == "api:admin"
        await operator_maintenance(store, False)

        # Both PSUs: the host powers off; the watcher hands the host to HA (drops its own hold).
        await asyncio.to_thread(fail_component, bmc.url, "psu", "h1", "PSU1")
        await until("maintenance request", lambda: _state(store, dkey, "maintenance"))
        await asyncio.to_thread(fail_component, bmc.url, "psu", "h1", "PSU2")
        failed = await until("failed", lambda: _health(store, ckey, "failed"))
        assert failed["placement"] == "failed"
        # A walk that straddles the power-off may first see the ports go down (network lost);
        # the next reading (the BMC's power-off event wakes it) says why.
        failed = await until("powered off", lambda: _reason(store, ckey, "powered off"))
        assert failed["health"] == "failed" and failed["events"] == "subscribed"
        await until("hand-over", lambda: _state(store, dkey, "up"))
    finally:
        stop.set()
        await task


async def _health(store: Store, key: str, want: str) -> dict[str, Any] | None:
    data = await record(store, key)
    return data if data.get("health") == want else None


async def _reason(store: Store, key: str, want: str) -> dict[str, Any] | None:
    data = await record(store, key)
    return data if data.get("reason") == want else None


async def _state(store: Store, key: str, want: str) -> bool:
    return (await record(store, key)).get("state") == want


async def test_alert_only_never_requests_maintenance(store: Store, bmc: RunningBmc) -> None:
    watcher = HardwareWatcher(store, spec("alert"), {"h1": bmc.url}, password="password")
    await watcher.poll_once("h1")
    await asyncio.to_thread(fail_component, bmc.url, "nic", "h1", "eth0")
    a = await watcher.poll_once("h1")
    assert a.health.value == "degraded" and "network: degraded" in a.reason
    assert watcher.placement(watcher.hosts["h1"]) == "normal"
    assert await store.get(keys.host_desired("tcomp", "h1")) is None
    kinds = [e.kind for e in await read_events(store, "tcomp")]
    assert "component-alert" in kinds and "component-policy" not in kinds


async def test_unreachable_bmc_is_unknown_and_counted(store: Store) -> None:
    watcher = HardwareWatcher(store, spec(), {"h1": "127.0.0.1:9"}, password="password", timeout=0.5)
    a = await watcher.poll_once("h1")
    assert a.health.value == "unknown" and watcher.hosts["h1"].errors == 1
    data = await store.get_json(keys.host_components("tcomp", "h1"))
    assert data["health"] == "unknown" and data["missing"] == ["BMC unreadable"]
    assert await store.get(keys.host_desired("tcomp", "h1")) is None


async def test_wrong_password_is_unknown_not_healthy(store: Store, bmc: RunningBmc) -> None:
    watcher = HardwareWatcher(store, spec(), {"h1": bmc.url}, password="wrong")
    assert (await watcher.poll_once("h1")).health.value == "unknown"


async def test_sushy_emulator_answers_and_gaps(store: Store, sushy_emulator: str) -> None:
    """sushy-emulator --fake: a system, fans/temperatures, an Ethernet interface; Storage answers
    500 and there is no Power. The watcher reads what is there and lists the rest as missing."""
    import urllib.request

    with urllib.request.urlopen(f"{sushy_emulator}/redfish/v1/Systems") as resp:  # noqa: S310
        system_id = json.loads(resp.read())["Members"][0]["@odata.id"].rsplit("/", 1)[1]
    s = ClusterSpec.model_validate({"cluster": "tcomp", "hosts": [{"name": "emu", "cpus": 1, "memory": "1GiB"}]})
    watcher = HardwareWatcher(store, s, {"emu": sushy_emulator}, password="password", timeout=5.0,
                              system_ids={"emu": system_id})
    a = await watcher.poll_once("emu")
    inventory = watcher.hosts["emu"].inventory
    assert inventory is not None and inventory.power_state in ("On", "Off")
    assert any("storage" in m.lower() for m in inventory.missing)
    assert any("power" in m.lower() for m in inventory.missing)
    power = a.group(ComponentGroup.POWER)
    assert power is not None and power.state.value == "unknown"  # no PSU data is not "redundant"
    data = await store.get_json(keys.host_components("tcomp", "emu"))
    assert data["groups"]["power"]["state"] == "unknown" and data["missing"]
    assert len(list(ComponentCollector(watcher).collect())) == 6  # metrics render with gaps too
    # Run with Redfish events on: the emulator offers no subscription, so the watcher polls.
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        await until("a polled record", lambda: _field(store, keys.host_components("tcomp", "emu"), "events",
                                                       "polling"), timeout=10)
        assert watcher.hosts["emu"].subscription is None
    finally:
        stop.set()
        await task


async def _field(store: Store, key: str, name: str, want: str) -> bool:
    return (await record(store, key)).get(name) == want


async def test_redfish_events_wake_the_watcher_long_before_its_poll(store: Store, bmc: RunningBmc) -> None:
    """A 30 s polling interval: only the BMC's pushed Event can make the watcher see a failure
    within seconds. A BMC that forgot the subscription (restart) gets it again; stopping the
    watcher removes it."""
    stop = asyncio.Event()
    box: dict[str, HardwareWatcher] = {}
    task = asyncio.create_task(run_hardware_watcher(
        store, spec("alert"), {"h1": bmc.url}, password="password", stop=stop, interval=30.0,
        watcher_ready=lambda w: box.setdefault("w", w)))
    ckey = keys.host_components("tcomp", "h1")
    try:
        first = await until("first reading", lambda: record(store, ckey))
        assert first["events"] == "subscribed" and len(bmc.bmc.subscriptions) == 1
        sub = next(iter(bmc.bmc.subscriptions.values()))
        assert sub["Context"] == "nonstop-watcher-tcomp" and sub["Destination"].endswith("/events/h1")
        t0 = time.monotonic()
        await asyncio.to_thread(fail_component, bmc.url, "psu", "h1", "PSU1")
        await until("degraded", lambda: _health(store, ckey, "degraded"), timeout=10)
        took = time.monotonic() - t0
        w = box["w"].hosts["h1"]
        assert took < 10 and w.redfish_events >= 1
        bmc.bmc.subscriptions.clear()
        w.subscription_checked = 0.0
        await box["w"].poll_once("h1")
        assert len(bmc.bmc.subscriptions) == 1 and w.subscription is not None
        print(f"\nevent-driven detection: {took:.3f} s (interval 30 s)")
    finally:
        stop.set()
        await task
    assert bmc.bmc.subscriptions == {}


def test_parse_target() -> None:
    assert parse_target("host1/PSU1") == ("host1", "PSU1")
    with pytest.raises(ValueError):
        parse_target("host1")
    with pytest.raises(ValueError):
        fail_component("http://127.0.0.1:9", "cpu", "h1", "x")
