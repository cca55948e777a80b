"""Driver contracts, one suite run against the fake driver and the (real) process driver."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nonstop.drivers import driver_class
from nonstop.drivers.base import (
    Driver,
    GuestDefinition,
    GuestExists,
    GuestNotFound,
    GuestStartError,
    GuestState,
    InvalidDefinition,
    NotSupported,
)
from nonstop.drivers.probe import http_get, wait_http_ok
from nonstop.drivers.process_net import netns_name
from nonstop.net import netns as nsutil

MiB = 2**20
PORT = 8080


@pytest.fixture(params=["fake", pytest.param("process", marks=pytest.mark.root)])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    cluster = f"gc{secrets.token_hex(3)}"
    drv = driver_class(request.param)(cluster=cluster, host="h1", state_dir=tmp_path / "state")
    yield drv
    for name in await drv.list_guests():
        await drv.destroy(name)
    await drv.close()
    leftovers = nsutil.list_names(f"nonstop-{cluster}-")
    assert leftovers == [], f"namespaces left behind: {leftovers}"
    assert not list(Path("/sys/fs/cgroup/cpu").rglob(f"nonstop.{cluster}.*")), "cgroups left behind"


def gdef(drv: Driver, name: str = "g0", **kw: object) -> GuestDefinition:
    base: dict[str, object] = {"vcpus": 1, "max_vcpus": 2, "memory": 64 * MiB, "max_memory": 128 * MiB, "port": PORT}
    base.update(kw)
    return GuestDefinition(name=name, cluster=drv.cluster, host=drv.host, **base)  # type: ignore[arg-type]


async def test_spawn_runs_with_a_boot_id_and_start_is_idempotent(driver: Driver) -> None:
    st = await driver.spawn(gdef(driver))
    assert st.state is GuestState.RUNNING and st.boot_id
    again = await driver.start("g0")
    assert again.state is GuestState.RUNNING and again.boot_id == st.boot_id  # never a second copy
    assert await driver.list_guests() == ["g0"]
    assert (await driver.definition("g0")).name == "g0"


async def test_stop_then_start_gives_a_new_boot(driver: Driver) -> None:
    first = await driver.spawn(gdef(driver))
    stopped = await driver.stop("g0", timeout=2)
    assert stopped.state is GuestState.STOPPED and stopped.failure_reason is None
    assert (await driver.stop("g0", timeout=2)).state is GuestState.STOPPED  # stopping twice is fine
    second = await driver.start("g0")
    assert second.state is GuestState.RUNNING and second.boot_id != first.boot_id


async def test_destroy_is_idempotent_and_forgets_the_guest(driver: Driver) -> None:
    await driver.spawn(gdef(driver))
    await driver.destroy("g0")
    await driver.destroy("g0")
    await driver.destroy("never-created")
    with pytest.raises(GuestNotFound):
        await driver.status("g0")
    assert await driver.list_guests() == []


async def test_create_twice_and_unknown_guest_are_typed_errors(driver: Driver) -> None:
    await driver.create(gdef(driver))
    with pytest.raises(GuestExists):
        await driver.create(gdef(driver))
    with pytest.raises(GuestNotFound):
        await driver.start("nope")
    with pytest.raises(GuestNotFound):
        await driver.stop("nope")


async def test_bad_input_fails_cleanly(driver: Driver) -> None:
    with pytest.raises(InvalidDefinition) as info:
        await driver.spawn(gdef(driver, memory=0, max_memory=0))
    assert info.value.permanent and info.value.reason
    assert await driver.list_guests() == []


async def test_hot_plug_changes_limits_without_restart(driver: Driver) -> None:
    st = await driver.spawn(gdef(driver))
    assert driver.capabilities.hotplug_vcpu and driver.capabilities.hotplug_memory
    after = await driver.set_vcpus("g0", 2)
    after = await driver.set_memory("g0", 128 * MiB)
    assert after.vcpus == 2 and after.memory == 128 * MiB and after.boot_id == st.boot_id
    with pytest.raises(InvalidDefinition):
        await driver.set_vcpus("g0", 3)  # above max_vcpus
    assert (await driver.definition("g0")).vcpus == 2


async def test_adopt_after_restart_keeps_the_running_guest(driver: Driver) -> None:
    st = await driver.spawn(gdef(driver))
    await driver.spawn(gdef(driver, name="g1"))
    await driver.stop("g1", timeout=2)
    fresh = type(driver)(cluster=driver.cluster, host=driver.host, state_dir=driver.state_dir, **driver.options)
    found = await fresh.adopt()
    assert found["g0"].state is GuestState.RUNNING and found["g0"].boot_id == st.boot_id
    assert found["g1"].state is GuestState.STOPPED
    await fresh.stop("g0", timeout=2)  # the new instance really controls it
    assert (await fresh.status("g0")).state is GuestState.STOPPED


async def test_unsupported_operations_say_so(driver: Driver) -> None:
    await driver.create(gdef(driver))
    if not driver.capabilities.live_migration:
        with pytest.raises(NotSupported):
            await driver.prepare_incoming(gdef(driver, name="m"))
    if not driver.capabilities.resize_disk:
        with pytest.raises(NotSupported):
            await driver.resize_disk("g0", "root", 2**30)


# ------------------------------------------------------------------ process driver only


@pytest.fixture
async def process_driver(tmp_path: Path) -> AsyncIterator[Driver]:
    cluster = f"gp{secrets.token_hex(3)}"
    drv = driver_class("process")(cluster=cluster, host="h1", state_dir=tmp_path / "state")
    yield drv
    for name in await drv.list_guests():
        await drv.destroy(name)
    assert nsutil.list_names(f"nonstop-{cluster}-") == []


@pytest.mark.root
async def test_process_guest_serves_identity_within_a_second(process_driver: Driver) -> None:
    st = await process_driver.spawn(gdef(process_driver, vcpus=2, memory=96 * MiB))
    ns = netns_name(process_driver.cluster, "g0")
    elapsed = wait_http_ok(ns, "127.0.0.1", PORT, deadline=5)
    assert elapsed < 1.0
    status, body = http_get(ns, "127.0.0.1", PORT, "/")
    page = json.loads(body)
    assert status == 200 and page["guest"] == "g0" and page["host"] == "h1"
    assert page["boot_id"] == st.boot_id and page["vcpus"] == 2.0 and page["memory_limit"] == 96 * MiB


@pytest.mark.root
async def test_unrunnable_command_is_a_permanent_start_error(process_driver: Driver) -> None:
    with pytest.raises(GuestStartError) as info:
        await process_driver.spawn(gdef(process_driver, command=("/nonexistent/workload",)))
    assert info.value.permanent and "nonexistent" in info.value.reason
    assert await process_driver.list_guests() == []
    assert not nsutil.exists(netns_name(process_driver.cluster, "g0"))


@pytest.mark.root
async def test_stop_kills_a_guest_that_ignores_sigterm(process_driver: Driver) -> None:
    stubborn = (shutil.which("python3") or "python3", "-c",
                "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)")
    await process_driver.spawn(gdef(process_driver, command=stubborn))
    pid = (await process_driver.status("g0")).pid
    assert pid is not None
    for _ in range(200):  # let it install its SIGTERM handler
        if "up" in await process_driver.console_log("g0"):
            break
        await asyncio.sleep(0.01)
    st = await process_driver.stop("g0", timeout=0.3)
    assert st.state is GuestState.STOPPED and not nsutil.alive(pid)
    assert not nsutil.exists(netns_name(process_driver.cluster, "g0"))


@pytest.mark.root
async def test_workload_that_exits_is_reported_failed_with_its_status(process_driver: Driver) -> None:
    await process_driver.spawn(gdef(process_driver, command=("sh", "-c", "echo broken config >&2; exit 3")))
    for _ in range(100):
        st = await process_driver.status("g0")
        if st.state is not GuestState.RUNNING:
            break
        await asyncio.sleep(0.02)
    assert st.state is GuestState.FAILED
    assert st.failure_reason is not None and "status 3" in st.failure_reason and "broken config" in st.failure_reason


@pytest.mark.root
async def test_status_polls_during_parallel_starts_never_tear_a_launch_down(process_driver: Driver) -> None:
    """An agent may ask for a guest's status while its start is still in flight (no pid yet): that
    is STARTING, not a death, and must not remove the netns/cgroup under the launch."""
    names = [f"g{i}" for i in range(4)]
    for name in names:
        await process_driver.create(gdef(process_driver, name))
    seen: dict[str, list[GuestState]] = {name: [] for name in names}
    starts = asyncio.gather(*(process_driver.start(name) for name in names))
    deadline = asyncio.get_running_loop().time() + 60
    while not starts.done() and asyncio.get_running_loop().time() < deadline:
        for name in names:
            seen[name].append((await process_driver.status(name)).state)
        await asyncio.sleep(0.002)
    results = await asyncio.wait_for(starts, 60)
    assert any(GuestState.STARTING in states for states in seen.values()), "no poll fell inside a start"
    assert all(set(states) <= {GuestState.STOPPED, GuestState.STARTING, GuestState.RUNNING}
               for states in seen.values()), seen
    assert [r.state for r in results] == [GuestState.RUNNING] * len(names)
    for name, result in zip(names, results, strict=True):
        status = await process_driver.status(name)
        assert status.state is GuestState.RUNNING and status.boot_id == result.boot_id
        ns = netns_name(process_driver.cluster, name)
        assert nsutil.exists(ns)
        wait_http_ok(ns, "127.0.0.1", PORT, deadline=10)
