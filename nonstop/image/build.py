"""Build the built-in guest image: Debian's kernel plus a busybox initramfs.

Role: collect the host's Debian cloud kernel (unpacked to its ELF ``vmlinux`` when it can
boot through PVH, which skips self-decompression under TCG), the few kernel modules a
nonstop guest needs (virtio PCI/net/blk, ACPI power button, evdev, with their modules.dep
dependencies, in load order), busybox-static and the guest scripts in ``nonstop/image/guest/`` into an
uncompressed newc cpio (uncompressed: under TCG unpacking gzip costs more than reading
the bytes). The result is cached under ``<cache>/<hash>/`` where the hash covers every
input, so a kernel upgrade or a script change gives a new image and an unchanged machine
reuses the old one.

Must not: start guests, know about QEMU, or touch anything outside its cache directory
(the staging tree is a temporary directory removed afterwards).
"""

from __future__ import annotations

import glob
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/nonstop/images")
BUILDER_VERSION = "2"

# Modules the guest loads, by file stem; dependencies are added from modules.dep.
# The cloud kernel builds all of these as modules (CONFIG_VIRTIO_PCI=m, CONFIG_VIRTIO_NET=m,
# CONFIG_VIRTIO_BLK=m, CONFIG_ACPI_BUTTON=m, CONFIG_INPUT_EVDEV=m); a kernel that builds one
# in is fine too: a stem missing from modules.dep is skipped when the kernel config says =y.
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "button", "evdev")
_MODULE_CONFIG = {
    "virtio_pci": "CONFIG_VIRTIO_PCI",
    "virtio_net": "CONFIG_VIRTIO_NET",
    "virtio_blk": "CONFIG_VIRTIO_BLK",
    "virtio_console": "CONFIG_VIRTIO_CONSOLE",
    "button": "CONFIG_ACPI_BUTTON",
    "evdev": "CONFIG_INPUT_EVDEV",
}

INITTAB = """\
::sysinit:/etc/rcS
::respawn:/bin/httpd -f -p 80 -h /www
::respawn:/bin/acpid -f -c /etc/acpi -l /dev/null
::respawn:/bin/uevent /etc/hotplug.sh
::respawn:/etc/hostinfo.sh
::shutdown:/bin/sync
"""

# guest script resource name -> path inside the initramfs
_SCRIPTS = {
    "rcS.sh": "etc/rcS",
    "hotplug.sh": "etc/hotplug.sh",
    "hostinfo.sh": "etc/hostinfo.sh",
    "index.cgi.sh": "www/cgi-bin/index.cgi",
    "disk.cgi.sh": "www/cgi-bin/disk.cgi",  # block workload for the mirrored-disk test (docs/components.md)
    "blob.cgi.sh": "www/cgi-bin/blob.cgi",  # bulk bytes both ways for the vNIC bandwidth test
    "poweroff.sh": "etc/acpi/PWRF/00000080",
}


class ImageBuildError(RuntimeError):
    """The image cannot be built on this machine (missing kernel, busybox, cpio ...)."""


@dataclass(frozen=True)
class ImagePaths:
    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class _Inputs:
    kernel: Path
    modules_dir: Path
    busybox: Path


def find_kernel(boot: Path = Path("/boot")) -> tuple[Path, Path]:
    """The newest Debian kernel with its module tree: (vmlinuz, /lib/modules/<version>).

    Prefers the cloud flavour (small, virtio drivers as modules), then any flavour.
    """
    for pattern in ("vmlinuz-*-cloud-amd64", "vmlinuz-*"):
        for kernel in sorted(boot.glob(pattern), reverse=True):
            version = kernel.name.removeprefix("vmlinuz-")
            modules = Path("/lib/modules") / version
            if (modules / "modules.dep").is_file():
                return kernel, modules
    raise ImageBuildError(
        f"no Debian kernel with modules under {boot} (install linux-image-cloud-amd64: bash scripts/setup.sh)"
    )


def find_busybox() -> Path:
    for candidate in ("/usr/bin/busybox", "/bin/busybox"):
        path = Path(candidate)
        if path.is_file() and _is_static(path):
            return path
    raise ImageBuildError("busybox-static is not installed (apt-get install busybox-static)")


def _is_static(path: Path) -> bool:
    # A dynamic ELF has a PT_INTERP naming the loader; a static one has none.
    return b"/lib64/ld-linux" not in path.read_bytes()[:4096] and b"ld-linux" not in path.read_bytes()[:8192]


def module_load_order(modules_dir: Path, wanted: tuple[str, ...] = GUEST_MODULES) -> list[str]:
    """Relative .ko paths in an order insmod accepts (dependencies first)."""
    deps: dict[str, list[str]] = {}
    by_stem: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        stem = Path(target).name.split(".ko")[0].replace("-", "_")
        by_stem[stem] = target
    config = _kernel_config(modules_dir.name)
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for stem in wanted:
        if stem in by_stem:
            visit(by_stem[stem])
        elif config.get(_MODULE_CONFIG.get(stem, ""), "") != "y":
            raise ImageBuildError(f"kernel {modules_dir.name} has no module {stem} and does not build it in")
    return order


def _kernel_config(version: str) -> dict[str, str]:
    path = Path("/boot") / f"config-{version}"
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key] = value
    return values


_COMPRESSIONS = {
    # kernel config symbol -> (payload magic, decompressor)
    "CONFIG_KERNEL_GZIP": (b"\x1f\x8b\x08", "gzip"),
    "CONFIG_KERNEL_XZ": (b"\xfd7zXZ\x00", "xz"),
    "CONFIG_KERNEL_LZ4": (b"\x02\x21\x4c\x18", "unlz4"),
    "CONFIG_KERNEL_ZSTD": (b"\x28\xb5\x2f\xfd", "zstd"),
}


def extract_vmlinux(bzimage: Path, config: dict[str, str]) -> bytes | None:
    """The uncompressed ELF kernel inside a bzImage, or None when it cannot be had.

    A kernel with CONFIG_PVH=y boots from its ELF directly (QEMU's PVH entry): no real-mode
    set-up and no self-decompression, which saves ~0.3-0.5 s per boot under TCG.
    """
    if config.get("CONFIG_PVH") != "y":
        return None
    data = bzimage.read_bytes()
    for symbol, (magic, tool) in _COMPRESSIONS.items():
        if config.get(symbol) != "y":
            continue
        start = data.find(magic)
        if start < 0:
            return None
        payload = data[start:]
        try:
            if tool == "gzip":
                result = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
            elif tool == "xz":
                result = lzma.LZMADecompressor().decompress(payload)
            elif shutil.which(tool):
                argv = [tool, "-d", "-c"] if tool == "zstd" else [tool, "-c"]
                result = subprocess.run(argv, input=payload, capture_output=True, check=False).stdout
            else:
                return None
        except (zlib.error, lzma.LZMAError, OSError):
            return None
        return result if result[:4] == b"\x7fELF" else None
    return None


def _script_texts() -> dict[str, bytes]:
    package = resources.files("nonstop.image") / "guest"
    return {name: (package / name).read_bytes() for name in _SCRIPTS}


def image_hash(inputs: _Inputs, modules: list[str]) -> str:
    digest = hashlib.sha256(BUILDER_VERSION.encode())
    for path in (inputs.kernel, inputs.busybox, *(inputs.modules_dir / m for m in modules)):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    for name, text in sorted(_script_texts().items()):
        digest.update(name.encode() + b"\0" + text)
    digest.update(INITTAB.encode())
    return digest.hexdigest()[:16]


def ensure_image(cache: Path = DEFAULT_CACHE, force: bool = False) -> ImagePaths:
    """The built-in image's kernel and initrd, building them once per distinct input."""
    kernel, modules_dir = find_kernel()
    inputs = _Inputs(kernel=kernel, modules_dir=modules_dir, busybox=find_busybox())
    modules = module_load_order(modules_dir)
    target = cache / image_hash(inputs, modules)
    for kernel_name in ("vmlinux", "vmlinuz"):
        paths = ImagePaths(kernel=target / kernel_name, initrd=target / "initrd.cpio")
        if not force and paths.kernel.is_file() and paths.initrd.is_file():
            return paths
    if shutil.which("cpio") is None:
        raise ImageBuildError("cpio is not installed (apt-get install cpio)")
    cache.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: a concurrent builder never sees half an image.
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        root = work / "root"
        _stage(root, inputs, modules)
        out = work / "image"
        out.mkdir()
        elf = extract_vmlinux(kernel, _kernel_config(modules_dir.name))
        if elf is not None:
            (out / "vmlinux").write_bytes(elf)
        else:
            shutil.copyfile(kernel, out / "vmlinuz")
        _pack(root, out / "initrd.cpio")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kernel_name = "vmlinux" if (target / "vmlinux").is_file() else "vmlinuz"
    return ImagePaths(kernel=target / kernel_name, initrd=target / "initrd.cpio")


def _stage(root: Path, inputs: _Inputs, modules: list[str]) -> None:
    for sub in ("bin", "dev", "etc/acpi/PWRF", "lib/modules", "proc", "sys", "run", "tmp", "www/cgi-bin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(inputs.busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    applets = subprocess.run(
        [str(inputs.busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin").symlink_to("bin")
    (root / "init").symlink_to("bin/busybox")
    for rel in modules:
        shutil.copyfile(inputs.modules_dir / rel, root / "lib/modules" / Path(rel).name)
    (root / "etc/modules").write_text("".join(Path(rel).name + "\n" for rel in modules))
    (root / "etc/inittab").write_text(INITTAB)
    for name, text in _script_texts().items():
        dest = root / _SCRIPTS[name]
        dest.write_bytes(text)
        dest.chmod(0o755)
    (root / "www/health").write_text("ok\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")


def _pack(root: Path, output: Path) -> None:
    names = sorted(os.path.relpath(p, root) for p in glob.glob(str(root / "**"), recursive=True) if p != str(root))
    with output.open("wb") as sink:
        proc = subprocess.run(
            ["cpio", "--create", "--format=newc", "--owner=0:0", "--quiet"],
            cwd=root,
            input="\n".join(names).encode() + b"\n",
            stdout=sink,
            stderr=subprocess.PIPE,
            check=False,
        )
    if proc.returncode != 0:
        raise ImageBuildError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
