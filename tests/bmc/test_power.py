"""Real power operations of the lab BMC: processes in the host's namespace die, nothing else does."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
import sushy

from nonstop.bmc.inventory import redfish_session
from nonstop.bmc.model import ComponentKind, PowerState
from nonstop.bmc.power import kill_namespace, namespace_id, pids_in_namespace
from nonstop.bmc.server import BmcHooks
from nonstop.fence import FenceOutcome, FenceTarget, RedfishFence

from .conftest import alive, own_pid_is_outside, spawn_in, start_in_namespace

pytestmark = pytest.mark.root


async def wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def until_inside(netns: str, *pids: int) -> None:
    """nsenter starts outside and joins the namespace a moment later: wait for that."""
    ns = namespace_id(Path(f"/run/netns/{netns}"))
    assert ns is not None
    await wait_until(lambda: set(pids) <= set(pids_in_namespace(ns)))


async def test_sushy_force_off_kills_the_namespace_and_nothing_else(netns: str) -> None:
    inside = [spawn_in(netns, "sleep", "300"), spawn_in(netns, "sh", "-c", "sleep 300 & sleep 300 & wait")]
    outside = subprocess.Popen(["sleep", "300"])
    killed_reports = []

    async def on_power_off(report):  # type: ignore[no-untyped-def]
        killed_reports.append(report)

    running = await start_in_namespace(netns, BmcHooks(on_power_off=on_power_off))
    try:
        ns = namespace_id(Path(f"/run/netns/{netns}"))
        assert ns is not None
        await wait_until(lambda: len(pids_in_namespace(ns)) >= 4)  # sleep, sh and its two sleeps
        before = set(pids_in_namespace(ns))
        assert own_pid_is_outside(netns)

        def force_off() -> str:
            with redfish_session(running.url, "admin", "password") as root:
                system = root.get_system("/redfish/v1/Systems/h1")
                assert system.power_state == sushy.PowerState.ON
                system.reset_system(sushy.ResetType.FORCE_OFF)
                system.refresh(force=True)
                return str(system.power_state.value)

        assert await asyncio.to_thread(force_off) == "Off"
        assert pids_in_namespace(ns) == []
        for proc in inside:
            assert proc.wait(timeout=2) == -9
        await wait_until(lambda: not any(alive(pid) for pid in before), 2.0)
        assert alive(outside.pid) and alive(os.getpid())
        assert set(killed_reports[0].killed) == before
        assert running.bmc.hw.power is PowerState.OFF
    finally:
        outside.kill()
        outside.wait()
        for proc in inside:
            proc.kill()
            proc.wait()
        await running.stop()


async def test_power_on_calls_the_hook_that_restarts_the_agent(netns: str) -> None:
    started: list[subprocess.Popen[bytes]] = []

    async def on_power_on() -> None:
        started.append(spawn_in(netns, "sleep", "300"))

    running = await start_in_namespace(netns, BmcHooks(on_power_on=on_power_on))
    try:
        assert await running.bmc.reset("ForceOff") is None
        assert started == []
        assert await running.bmc.reset("On") is None
        assert len(started) == 1 and running.bmc.hw.power is PowerState.ON
        await until_inside(netns, started[0].pid)
        # ForceRestart: the agent dies, and the hook brings up a new one
        assert await running.bmc.reset("ForceRestart") is None
        assert started[0].wait(timeout=2) == -9
        assert len(started) == 2 and alive(started[1].pid)
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
        await running.stop()


async def test_graceful_shutdown_terms_then_kills(netns: str) -> None:
    polite = spawn_in(netns, "sleep", "300")
    stubborn = spawn_in(netns, "sh", "-c", "trap '' TERM; while :; do sleep 0.05; done")
    running = await start_in_namespace(netns, graceful_timeout=0.5)
    try:
        await until_inside(netns, polite.pid, stubborn.pid)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await running.bmc.reset("GracefulShutdown") is None
        assert 0.4 <= loop.time() - start < 5.0  # waited for the stubborn one, then killed it
        assert polite.wait(timeout=2) == -15  # SIGTERM
        assert stubborn.wait(timeout=2) == -9  # SIGKILL after the grace period
    finally:
        for proc in (polite, stubborn):
            proc.kill()
            proc.wait()
        await running.stop()


async def test_losing_every_psu_powers_off_for_real(netns: str) -> None:
    proc = spawn_in(netns, "sleep", "300")
    changes: list[tuple[ComponentKind, str, bool]] = []

    async def on_component(kind: ComponentKind, name: str, failed: bool) -> None:
        changes.append((kind, name, failed))

    running = await start_in_namespace(netns, BmcHooks(on_component=on_component))
    try:
        bmc = running.bmc
        await until_inside(netns, proc.pid)
        await bmc.set_component(ComponentKind.PSU, "PSU1", failed=True)
        assert bmc.hw.power is PowerState.ON and bmc.hw.power_health.value == "Warning"
        assert proc.poll() is None
        await bmc.set_component(ComponentKind.PSU, "PSU2", failed=True)
        assert bmc.hw.power is PowerState.OFF
        assert bmc.hw.power_off_reason == "all power supplies lost"
        assert proc.wait(timeout=2) == -9
        assert await bmc.reset("On") == "no working power supply"
        await bmc.set_component(ComponentKind.PSU, "PSU2", failed=False)
        assert bmc.hw.power is PowerState.OFF  # repair does not power on, as on hardware
        assert await bmc.reset("On") is None
        assert changes == [(ComponentKind.PSU, "PSU1", True), (ComponentKind.PSU, "PSU2", True),
                           (ComponentKind.PSU, "PSU2", False)]
    finally:
        proc.kill()
        proc.wait()
        await running.stop()


def test_kill_namespace_of_a_missing_namespace_is_harmless() -> None:
    report = kill_namespace("nonstop-bmc-does-not-exist")
    assert report.namespace_missing and report.killed == [] and report.complete


async def test_graceful_shutdown_over_http_returns_at_once(netns: str) -> None:
    from nonstop.bmc import client

    stubborn = spawn_in(netns, "sh", "-c", "trap '' TERM; while :; do sleep 0.05; done")
    running = await start_in_namespace(netns, graceful_timeout=30.0)
    try:
        await until_inside(netns, stubborn.pid)

        def graceful() -> float:
            import time

            with redfish_session(running.url, "admin", "password") as root:
                start = time.monotonic()
                root.get_system("/redfish/v1/Systems/h1").reset_system(sushy.ResetType.GRACEFUL_SHUTDOWN)
                return time.monotonic() - start

        assert await asyncio.to_thread(graceful) < 0.5
        assert (await asyncio.to_thread(client.state, running.url))["power"] == "PoweringOff"
        # a fence during the 30 s grace period is not queued behind it
        result = await RedfishFence().fence(FenceTarget("h1", running.url, "admin", "password"), timeout=3.0)
        assert result.outcome is FenceOutcome.VERIFIED_OFF and result.seconds < 2.0
        assert stubborn.wait(timeout=2) == -9
        await wait_until(lambda: running.bmc.hw.power is PowerState.OFF, 5.0)
    finally:
        stubborn.kill()
        stubborn.wait()
        await running.stop()
