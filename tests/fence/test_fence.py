"""Fence agents: Redfish through sushy against our BMC and the real sushy-emulator; the watchdog wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from nonstop.bmc.inventory import read_inventory, redfish_session
from nonstop.bmc.model import HostHardware, PowerState
from nonstop.bmc.server import Bmc, BmcConfig, start_bmc
from nonstop.core.ha.hardware import ComponentGroup, HardwareInventory
from nonstop.core.spec import HostSpec
from nonstop.fence import (
    FENCE_AGENTS,
    FenceOutcome,
    FenceTarget,
    RedfishFence,
    WatchdogWaitFence,
    fence_in_order,
    target_for,
)

from .conftest import free_port


def hardware(name: str = "h1") -> HostHardware:
    return HostHardware.from_spec(HostSpec(name=name, cpus=1, memory="1GiB"))


async def test_redfish_fence_powers_off_and_verifies() -> None:
    running = await start_bmc(BmcConfig(hardware(), None, password="s3cret"))
    try:
        agent = RedfishFence()
        target = FenceTarget("h1", running.url, "admin", "s3cret")
        assert await agent.status(target) == "On"
        result = await agent.fence(target, timeout=5.0)
        assert result.outcome is FenceOutcome.VERIFIED_OFF and result.fenced
        assert result.seconds < 5.0
        assert running.bmc.hw.power is PowerState.OFF
        assert await agent.status(target) == "Off"
        again = await agent.fence(target, timeout=5.0)  # idempotent
        assert again.outcome is FenceOutcome.VERIFIED_OFF and again.detail == "already off"
    finally:
        await running.stop()


class StuckBmc(Bmc):
    """A BMC that accepts the reset and never turns off (a wedged power controller)."""

    async def reset(self, reset_type: str) -> str | None:
        return None


async def test_redfish_fence_reports_timeout_when_power_stays_on() -> None:
    config = BmcConfig(hardware(), None)
    running = await start_bmc(config, bmc=StuckBmc(config))
    try:
        start = time.monotonic()
        result = await RedfishFence(poll=0.05).fence(FenceTarget("h1", running.url, "admin", "password"), timeout=0.6)
        assert result.outcome is FenceOutcome.TIMEOUT and not result.fenced
        assert "still On" in result.detail
        assert 0.5 <= time.monotonic() - start < 2.0
    finally:
        await running.stop()


async def test_redfish_fence_unreachable_and_bad_credentials() -> None:
    agent = RedfishFence()
    result = await agent.fence(FenceTarget("h1", f"http://127.0.0.1:{free_port()}", "admin", "x"), timeout=2.0)
    assert result.outcome is FenceOutcome.UNREACHABLE and result.seconds < 3.0
    running = await start_bmc(BmcConfig(hardware(), None))
    try:
        result = await agent.fence(FenceTarget("h1", running.url, "admin", "wrong"), timeout=2.0)
        assert result.outcome is FenceOutcome.UNREACHABLE and "credentials" in result.detail
        assert running.bmc.hw.power is PowerState.ON
        result = await agent.fence(FenceTarget("h1", running.url, "admin", "password", system_id="nope"), timeout=2.0)
        assert not result.fenced
    finally:
        await running.stop()


async def test_watchdog_wait_fence() -> None:
    agent = WatchdogWaitFence(self_fence_timeout=0.1)
    heard = time.monotonic()
    result = await agent.fence(FenceTarget("h1", last_heard=heard), timeout=1.0)
    assert result.outcome is FenceOutcome.ASSUMED_OFF
    assert time.monotonic() - heard >= 0.2  # twice the self-fence timeout since last heard
    slow = WatchdogWaitFence(self_fence_timeout=10.0)
    result = await slow.fence(FenceTarget("h1", last_heard=time.monotonic()), timeout=0.1)
    assert result.outcome is FenceOutcome.TIMEOUT and "more to wait" in result.detail


async def test_fallback_order_redfish_then_watchdog() -> None:
    target = FenceTarget("h1", f"http://127.0.0.1:{free_port()}", "admin", "x", last_heard=time.monotonic() - 1.0)
    results = await fence_in_order([RedfishFence(), WatchdogWaitFence(0.2)], target, timeout=2.0)
    assert [r.outcome for r in results] == [FenceOutcome.UNREACHABLE, FenceOutcome.ASSUMED_OFF]
    assert set(FENCE_AGENTS) == {"redfish", "watchdog-wait"}


@pytest.mark.slow
async def test_against_the_real_sushy_emulator(sushy_emulator: str) -> None:
    # Inventory: the emulator lacks PowerSubsystem, NetworkAdapters and (fake driver) Storage;
    # the reader must report what it has and list the gaps, not crash.
    def read() -> HardwareInventory:
        with redfish_session(sushy_emulator, "admin", "password") as root:
            return read_inventory(root)

    inventory = await asyncio.to_thread(read)
    assert inventory.system != "?" and inventory.power_state == "On"
    assert inventory.group(ComponentGroup.COOLING)  # the emulator's Thermal fans and temperatures
    assert inventory.group(ComponentGroup.NETWORK)  # from EthernetInterfaces
    assert inventory.missing  # and the gaps are named
    # Fence. The fake driver applies power actions 0-11 s late ("hardware actions are not
    # immediate"): a short deadline must end in an honest timeout, a long one in verified-off.
    agent = RedfishFence(poll=0.2)
    target = FenceTarget("emulated", sushy_emulator, "admin", "password")
    assert await agent.status(target) == "On"
    first = await agent.fence(target, timeout=0.3)
    if first.outcome is FenceOutcome.TIMEOUT:
        assert "still On" in first.detail and first.seconds < 2.0
    else:
        assert first.outcome is FenceOutcome.VERIFIED_OFF  # the emulator happened to be quick
    result = await agent.fence(target, timeout=15.0)
    assert result.outcome is FenceOutcome.VERIFIED_OFF, result
    assert await agent.status(target) == "Off"


async def test_target_from_the_host_spec() -> None:
    running = await start_bmc(BmcConfig(hardware(), None, password="pw"))
    try:
        spec = HostSpec(name="h1", cpus=1, memory="1GiB", bmc={"address": running.url.removeprefix("http://")})
        target = target_for(spec, password="pw")
        assert target.bmc_url == running.url and target.system_id == "h1"
        assert (await RedfishFence().fence(target, timeout=5.0)).outcome is FenceOutcome.VERIFIED_OFF
        assert target_for(HostSpec(name="h2", cpus=1, memory="1GiB"), password="x").bmc_url is None
    finally:
        await running.stop()
