"""QEMU driver: a host that no longer runs a guest never removes the guest's shared files.

Lab hosts share the disk directory (``<disk_dir>/<cluster>/<guest>/``: disks and layout.json).
An agent on a former host of a guest — restarted after a patch, or back after a failover — finds
the guest's old run directory and destroys it; that destroy must remove only its own runtime
state, never the layout and disks the guest's current host uses (docs/patching.md: "a VM's shared
machine layout can vanish after its host's agent restarts"). No VM boots here: qemu-img only.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from nonstop.core.guests.model import GuestDefinition
from nonstop.drivers.base import DiskDefinition, GuestNotFound
from nonstop.drivers.qemu import QemuDriver

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")

CLUSTER = "t"
MIB = 2**20


def _drivers(tmp_path: Path) -> tuple[QemuDriver, QemuDriver, Path]:
    disks = tmp_path / "disks"  # one directory both hosts see, as in the lab
    h1 = QemuDriver(cluster=CLUSTER, host="h1", state_dir=tmp_path / "h1", disk_dir=disks)
    h3 = QemuDriver(cluster=CLUSTER, host="h3", state_dir=tmp_path / "h3", disk_dir=disks)
    return h1, h3, disks / CLUSTER / "web-0"


def _definition(host: str) -> GuestDefinition:
    return GuestDefinition(name="web-0", cluster=CLUSTER, host=host, kind="vm",
                           disks=(DiskDefinition(name="data", size=16 * MIB, provisioning="thin"),))


def test_former_host_destroy_keeps_layout_and_disks_of_the_current_host(tmp_path: Path) -> None:
    h1, h3, shared = _drivers(tmp_path)
    asyncio.run(h1.create(_definition("h1")))
    assert json.loads((shared / "layout.json").read_text())["owner"] == "h1"
    # The guest is placed on h3 now (restarted there while h1 was away): h3 defines it on the shared disks.
    asyncio.run(h3.create(_definition("h3")))
    # h1's agent comes back, finds its stale copy and destroys it ("no longer assigned to this host").
    asyncio.run(h1.destroy("web-0"))
    assert asyncio.run(h1.list_guests()) == []
    assert not (tmp_path / "h1" / "web-0").exists(), "h1's own runtime state is gone"
    layout = json.loads((shared / "layout.json").read_text())
    assert layout["owner"] == "h3"
    assert (shared / "data.qcow2").exists(), "the disk h3 uses is kept"
    assert h3._layout("web-0").vcpus == 1  # h3 can still read its machine shape (a failback needs it)
    # The owner's destroy does remove the shared files.
    asyncio.run(h3.destroy("web-0"))
    assert not shared.exists()


def test_owner_destroy_removes_shared_files_and_a_second_destroy_succeeds(tmp_path: Path) -> None:
    h1, _h3, shared = _drivers(tmp_path)
    asyncio.run(h1.create(_definition("h1")))
    asyncio.run(h1.destroy("web-0"))
    assert not shared.exists()
    asyncio.run(h1.destroy("web-0"))  # already gone: still succeeds
    with pytest.raises(GuestNotFound):
        asyncio.run(h1.status("web-0"))


def test_layout_handed_to_the_destination_is_kept_by_the_source_cleanup(tmp_path: Path) -> None:
    """A source whose migration completed hands the layout over before anything else; its
    clean-up (or the clean-up of an agent restarted before it finished) then keeps it."""
    h1, h3, shared = _drivers(tmp_path)
    asyncio.run(h1.create(_definition("h1")))
    h1._claim_layout("web-0", "h3")  # what QemuDriver._migrate does right after QEMU reports completed
    asyncio.run(h1.destroy("web-0"))
    assert json.loads((shared / "layout.json").read_text())["owner"] == "h3"
    assert (shared / "data.qcow2").exists()
