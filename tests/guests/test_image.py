"""The built-in guest image builder: contents, module order, caching (no VM boots here;
booting it is tests/guests/test_qemu_vm.py)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nonstop.image import build

pytestmark = pytest.mark.skipif(
    shutil.which("cpio") is None or not list(Path("/boot").glob("vmlinuz-*")),
    reason="needs cpio and a Debian kernel (bash scripts/setup.sh installs them)",
)


def _listing(initrd: Path) -> list[str]:
    out = subprocess.run(["cpio", "-it", "--quiet"], stdin=initrd.open("rb"), capture_output=True, check=True)
    return out.stdout.decode().split()


def _extract(initrd: Path, member: str) -> str:
    out = subprocess.run(["cpio", "-i", "--to-stdout", "--quiet", member], stdin=initrd.open("rb"),
                         capture_output=True, check=True)
    return out.stdout.decode()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> build.ImagePaths:
    return build.ensure_image(tmp_path_factory.mktemp("images"))


def test_initramfs_has_init_busybox_scripts_and_modules(image: build.ImagePaths) -> None:
    names = set(_listing(image.initrd))
    for required in ("init", "bin/busybox", "bin/httpd", "bin/acpid", "bin/uevent", "etc/inittab", "etc/rcS",
                     "etc/hotplug.sh", "etc/hostinfo.sh", "www/health", "www/cgi-bin/index.cgi",
                     "etc/acpi/PWRF/00000080", "lib/modules/virtio_net.ko", "lib/modules/button.ko",
                     "lib/modules/evdev.ko", "lib/modules/virtio_console.ko"):
        assert required in names, required
    assert image.kernel.stat().st_size > 1_000_000


def test_modules_load_dependencies_first(image: build.ImagePaths) -> None:
    order = _extract(image.initrd, "etc/modules").split()
    for module, needs in (("virtio_net.ko", ["virtio.ko", "virtio_ring.ko", "net_failover.ko", "failover.ko"]),
                          ("virtio_pci.ko", ["virtio.ko"]), ("net_failover.ko", ["failover.ko"])):
        for dep in needs:
            assert order.index(dep) < order.index(module), f"{dep} must load before {module}"


def test_inittab_runs_httpd_acpid_and_hotplug_listener(image: build.ImagePaths) -> None:
    inittab = _extract(image.initrd, "etc/inittab")
    assert "::sysinit:/etc/rcS" in inittab
    for daemon in ("/bin/httpd -f -p 80", "/bin/acpid -f", "/bin/uevent /etc/hotplug.sh", "/etc/hostinfo.sh"):
        assert daemon in inittab


def test_second_build_is_a_cache_hit(tmp_path: Path, image: build.ImagePaths) -> None:
    first = build.ensure_image(tmp_path)
    mtime = first.initrd.stat().st_mtime_ns
    started = time.monotonic()
    second = build.ensure_image(tmp_path)
    assert second == first and second.initrd.stat().st_mtime_ns == mtime
    assert time.monotonic() - started < 1.0
    assert first.initrd.parent.parent == tmp_path
    # Same inputs, same hash: the module-scoped image in another cache has the same name.
    assert first.initrd.parent.name == image.initrd.parent.name


def test_forced_rebuild_replaces_the_image(tmp_path: Path) -> None:
    first = build.ensure_image(tmp_path)
    first.initrd.write_bytes(b"truncated")
    again = build.ensure_image(tmp_path, force=True)
    assert again == first and again.initrd.stat().st_size > 1_000_000
    assert [p.name for p in tmp_path.iterdir()] == [first.initrd.parent.name], "no half-built directories left"


def test_unknown_module_that_the_kernel_lacks_is_an_error() -> None:
    _, modules_dir = build.find_kernel()
    with pytest.raises(build.ImageBuildError, match="no module"):
        build.module_load_order(modules_dir, ("virtio_net", "no_such_driver_xyz"))
