"""BMC test fixtures: a throw-away network namespace with processes in it, and a running BMC."""

from __future__ import annotations

import os
import secrets
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nonstop.bmc.model import HostHardware
from nonstop.bmc.power import kill_namespace
from nonstop.bmc.server import BmcConfig, BmcHooks, RunningBmc, start_bmc
from nonstop.core.spec import HostSpec

CSDL_NAME = "DSP8010-csdl-2025.4.tar.xz"
CSDL_TARBALL = Path(__file__).resolve().parents[3] / "shared" / "redfish" / CSDL_NAME


def find_csdl_tarball() -> Path | None:
    """shared/ sits beside the checkout (developers and CI alike); NONSTOP_REDFISH_CSDL names the
    tarball explicitly, and /work/shared is looked at for a checkout cloned elsewhere."""
    candidates = [Path(os.environ["NONSTOP_REDFISH_CSDL"])] if os.environ.get("NONSTOP_REDFISH_CSDL") else []
    candidates += [CSDL_TARBALL, Path("/work/shared/redfish") / CSDL_NAME]
    return next((path for path in candidates if path.is_file()), None)


@pytest.fixture(scope="session")
def csdl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DMTF's CSDL schemas unpacked into a temp dir (never into the repo)."""
    tarball = find_csdl_tarball()
    if tarball is None:
        pytest.skip("DSP8010 CSDL tarball not found (../shared/redfish beside the checkout, /work/shared/redfish or NONSTOP_REDFISH_CSDL)")
    target = tmp_path_factory.mktemp("csdl")
    with tarfile.open(tarball) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace ``nonstop-bmc<token>``; everything in it is killed and it is removed after."""
    from pyroute2 import netns as pr_netns

    name = f"nonstop-bmc{secrets.token_hex(3)}"
    pr_netns.create(name)
    try:
        yield name
    finally:
        kill_namespace(name, timeout=5.0)
        pr_netns.remove(name)


def spawn_in(netns_name: str, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{netns_name}", *argv], start_new_session=True)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def host_hardware(name: str = "h1") -> HostHardware:
    return HostHardware.from_spec(HostSpec(name=name, cpus=2, memory="4GiB"))


@pytest.fixture
async def running_bmc() -> AsyncIterator[RunningBmc]:
    """A BMC on 127.0.0.1 with no namespace (power-off kills nothing)."""
    bmc = await start_bmc(BmcConfig(host_hardware(), None))
    try:
        yield bmc
    finally:
        await bmc.stop()


async def start_in_namespace(netns_name: str, hooks: BmcHooks | None = None, **kwargs: float) -> RunningBmc:
    return await start_bmc(BmcConfig(host_hardware(), netns_name, **kwargs), hooks)  # type: ignore[arg-type]


def own_pid_is_outside(netns_name: str) -> bool:
    return os.stat("/proc/self/ns/net").st_ino != os.stat(f"/run/netns/{netns_name}").st_ino
