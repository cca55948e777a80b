"""The agent's FenceGate around a driver (fake driver, no mocks of the gate): starts are refused
while fenced, and a guest whose start is in flight is reported STARTING without asking the
driver (which, for process guests, would take it for dead and release its resources mid-start)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from nonstop.agent.selffence import FenceGate
from nonstop.core.guests.model import GuestDefinition, GuestState, GuestStatus
from nonstop.drivers.base import GuestStartError
from nonstop.drivers.fake import FakeDriver


class SlowStart(FakeDriver):
    """A fake whose start takes a while and which records every status call."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.release = asyncio.Event()

    async def start(self, name: str) -> GuestStatus:
        await self.release.wait()
        return await super().start(name)

    async def status(self, name: str) -> GuestStatus:
        self.calls.append(("status", name))
        return await super().status(name)


def _definition(name: str) -> GuestDefinition:
    return GuestDefinition(name=name, cluster="c", host="h1", kind="process", vcpus=1, memory=64 << 20)


def test_status_of_a_guest_mid_start_is_starting_and_does_not_reach_the_driver(tmp_path: Path) -> None:
    async def go() -> None:
        driver = SlowStart(cluster="c", host="h1", state_dir=tmp_path)
        gated = FenceGate().wrap({"process": driver})["process"]
        spawn = asyncio.create_task(gated.spawn(_definition("api-0")))
        await asyncio.sleep(0.05)
        assert (await gated.status("api-0")).state is GuestState.STARTING
        assert ("status", "api-0") not in driver.calls
        driver.release.set()
        await spawn
        assert (await gated.status("api-0")).state is GuestState.RUNNING
        assert ("status", "api-0") in driver.calls

    asyncio.run(go())


def test_starts_are_refused_while_fenced(tmp_path: Path) -> None:
    async def go() -> None:
        driver = SlowStart(cluster="c", host="h1", state_dir=tmp_path)
        driver.release.set()
        gate = FenceGate()
        gated = gate.wrap({"process": driver})["process"]
        gate.fenced, gate.reason = True, "test"
        with pytest.raises(GuestStartError, match="self-fenced"):
            await gated.spawn(_definition("api-0"))
        assert await driver.list_guests() == []

    asyncio.run(go())
