"""Host-side plumbing for the QEMU driver: acceleration probe, disks, taps, processes, QMP.

Role: the small I/O steps ``nonstop.drivers.qemu`` composes — decide KVM vs TCG with a
bounded boot probe (cached per kernel + QEMU build), create disk images with ``qemu-img``,
bridge a VM's tap in the host's network namespace (pyroute2) and cap its bandwidth (tbf +
nftables policing, as nonstop.net renders them), spawn QEMU inside that namespace
(``nonstop.net.netns.spawn``: forked by a thread inside it), recognise our own QEMU
processes by pid + start time + ``-name guest=...``, and open short QMP sessions (qemu.qmp).

Must not: keep per-guest state (the driver does), decide what a guest should look like
(the pure renderer does), or touch processes it cannot prove are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
ACCEL_CACHE = Path("/var/cache/nonstop/accel")
KVM_PROBE_SECONDS = 3.0


class RuntimeFailure(RuntimeError):
    """A host-side step failed; the message is fit for a guest's failure reason."""


# ----------------------------------------------------------------------- acceleration


def probe_accel(kernel: Path, initrd: Path, *, cache_dir: Path = ACCEL_CACHE, force: bool = False) -> str:
    """``kvm`` if a KVM guest reaches our init within ``KVM_PROBE_SECONDS``, else ``tcg``.

    /dev/kvm can exist and accept ioctls while guests hang (this machine); only a real boot
    tells. The answer is cached per host kernel and QEMU binary, so the probe runs once.
    """
    override = os.environ.get("NONSTOP_ACCEL")
    if override in ("kvm", "tcg"):
        return override
    if not os.path.exists("/dev/kvm"):
        return "tcg"
    qemu_path = _which(QEMU)
    # Whether KVM guests run depends on this machine's kernel and the QEMU build, not on the guest image.
    key = hashlib.sha256(
        f"{os.uname().release}:{qemu_path}:{Path(qemu_path).stat().st_mtime_ns}".encode()
    ).hexdigest()[:16]
    cached = cache_dir / f"{key}.json"
    if not force and cached.is_file():
        return str(json.loads(cached.read_text())["accel"])
    console = cache_dir / f"probe-{os.getpid()}.log"
    cache_dir.mkdir(parents=True, exist_ok=True)
    argv = [qemu_path, "-machine", "pc", "-accel", "kvm", "-cpu", "max", "-nodefaults", "-no-user-config",
            "-display", "none", "-m", "128M", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1", "-serial", f"file:{console}", "-no-reboot"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    accel = "tcg"
    deadline = time.monotonic() + KVM_PROBE_SECONDS
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if console.exists() and b"nonstop-guest: init" in console.read_bytes():
                accel = "kvm"
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        console.unlink(missing_ok=True)
    cached.write_text(json.dumps({"accel": accel, "probed_at": time.time()}))
    return accel


def _which(binary: str) -> str:
    for directory in os.environ.get("PATH", "/usr/bin").split(":") + ["/usr/bin", "/usr/sbin"]:
        candidate = Path(directory) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeFailure(f"{binary} is not installed (apt-get install qemu-system-x86 qemu-utils)")


# ------------------------------------------------------------------------------ disks


def image_info(path: Path) -> dict[str, Any]:
    """``qemu-img info`` as a dict; ``RuntimeFailure`` if the file is not a usable image."""
    proc = subprocess.run([_which(QEMU_IMG), "info", "--output=json", "-U", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeFailure(f"bad disk {path}: {_last_line(proc.stderr)}")
    info: dict[str, Any] = json.loads(proc.stdout)
    return info


def create_disk(path: Path, size: int, provisioning: str, base: Path | None = None) -> str:
    """Create a disk image and return its format.

    thin  = qcow2 (allocated on write); with ``base``, a qcow2 overlay on the shared base image.
    thick = raw, every byte allocated now (with ``base``: a full raw copy of it, grown to size).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _which(QEMU_IMG)
    if provisioning == "thin":
        argv = [img, "create", "-q", "-f", "qcow2"]
        if base is not None:
            argv += ["-b", str(base), "-F", image_info(base)["format"]]
        _run([*argv, str(path), str(size)], f"cannot create disk {path.name}")
        return "qcow2"
    if provisioning != "thick":
        raise RuntimeFailure(f"unknown provisioning {provisioning!r} (thin or thick)")
    if base is not None:
        _run([img, "convert", "-q", "-S", "0", "-O", "raw", str(base), str(path)], f"cannot copy base for {path.name}")
        _run([img, "resize", "-q", "-f", "raw", "--preallocation=full", str(path), str(size)],
             f"cannot grow disk {path.name}")
    else:
        _run([img, "create", "-q", "-f", "raw", "-o", "preallocation=full", str(path), str(size)],
             f"cannot create disk {path.name}")
    return "raw"


def resize_disk(path: Path, fmt: str, size: int) -> None:
    """Grow an image offline (raw images stay fully allocated)."""
    argv = [_which(QEMU_IMG), "resize", "-q", "-f", fmt]
    if fmt == "raw":
        argv.append("--preallocation=full")
    _run([*argv, str(path), str(size)], f"cannot resize disk {path.name}")


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeFailure(f"{what}: {_last_line(proc.stderr)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


# ------------------------------------------------------------------------------ taps


def bridge_tap(netns: str | None, tap: str, bridge: str | None, timeout: float = 5.0) -> None:
    """Put QEMU's tap into ``bridge`` (if given) and bring it up, in the host's namespace.

    QEMU creates the tap itself when it opens ``ifname=`` (and it vanishes when QEMU exits);
    a tap prepared beforehand (nonstop.net) is used as is and only enslaved when unbridged.
    """
    from nonstop.net.netns import open_iproute

    ipr = open_iproute(netns)
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = ipr.link_lookup(ifname=tap)
            if found:
                break
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"tap {tap} did not appear in namespace {netns or 'of the agent'}")
            time.sleep(0.02)
        index = found[0]
        if bridge:
            bridges = ipr.link_lookup(ifname=bridge)
            if not bridges:
                raise RuntimeFailure(f"bridge {bridge} does not exist in namespace {netns or 'of the agent'}")
            link = ipr.get_links(index)[0]
            if link.get_attr("IFLA_MASTER") != bridges[0]:
                ipr.link("set", index=index, master=bridges[0])
        ipr.link("set", index=index, state="up")
    finally:
        ipr.close()


def shape_tap(netns: str | None, tap: str, bandwidth: int | None) -> None:
    """Cap a VM vNIC at ``bandwidth`` bits/s in each direction, as nonstop.net does for lab
    vNICs: a tbf qdisc on the tap's egress (toward the guest) and an nftables netdev policing
    table on its ingress (what the guest sends). None/0 removes both. Idempotent."""
    from nonstop.core.net import names
    from nonstop.core.net.model import SetEgressRate
    from nonstop.core.net.nftables import policing_table
    from nonstop.net import netlink, nft
    from nonstop.net.netns import open_iproute

    rate = max(bandwidth // 8, 1) if bandwidth else None  # the kernel counts bytes
    ipr = open_iproute(netns)
    try:
        netlink.apply_link_op(ipr, SetEgressRate(name=tap, rate=rate))
    except Exception as exc:  # NetlinkError, LookupError: the tap is not there
        raise RuntimeFailure(f"cannot shape tap {tap}: {exc}") from exc
    finally:
        ipr.close()
    if netns is None:
        if rate:
            raise RuntimeFailure("vNIC bandwidth limits need the host's network namespace (netns option)")
        return
    table = names.bandwidth_table_name(tap)
    try:
        if rate:
            nft.load(netns, policing_table(table, tap, rate), replace=True)
        elif ("netdev", table) in nft.list_tables(netns):
            nft.delete(netns, "netdev", table)
    except (nft.NftError, OSError) as exc:
        raise RuntimeFailure(f"cannot police tap {tap}: {exc}") from exc


def unshape_tap(netns: str | None, tap: str) -> None:
    """Drop a tap's policing table (its tbf goes with the tap). Succeeds if nothing is left."""
    from nonstop.core.net import names
    from nonstop.net import netns as namespaces
    from nonstop.net import nft

    if netns is None or not namespaces.exists(netns):
        return

    table = names.bandwidth_table_name(tap)
    with contextlib.suppress(nft.NftError, OSError):
        if ("netdev", table) in nft.list_tables(netns):
            nft.delete(netns, "netdev", table)


# -------------------------------------------------------------------------- processes


def spawn(argv: list[str], netns: str | None, log_path: Path) -> subprocess.Popen[bytes]:
    """Start QEMU in its own session (it outlives the agent) inside ``netns``."""
    if netns:
        from nonstop.net import netns as namespaces

        if not namespaces.exists(netns):
            raise RuntimeFailure(f"network namespace {netns} does not exist")
        return namespaces.spawn(netns, argv, log_path=str(log_path))
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_our_qemu(pid: int, start_time: int | None, guest: str) -> bool:
    """True when ``pid`` is still the QEMU we started for ``guest`` (not a recycled pid)."""
    now_start = process_start_time(pid)
    if now_start is None or (start_time is not None and now_start != start_time):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"guest={guest},debug-threads=on".encode() in cmdline


def process_usage(pid: int) -> tuple[int | None, float | None]:
    """(RSS bytes, CPU seconds) of a process, Nones if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def kill_process(pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


async def wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Wait until the process has exited (reaping it if it is our child); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif process_start_time(pid) is None:
            return True
        await asyncio.sleep(0.05)
    return False


# ------------------------------------------------------------------------------- QMP


@contextlib.asynccontextmanager
async def qmp_session(socket_path: Path, timeout: float = 5.0) -> AsyncIterator[QMPClient]:
    """One short QMP session. QEMU serves one QMP client at a time, so sessions stay short."""
    client = QMPClient(f"nonstop-{socket_path.parent.name}")
    try:
        await asyncio.wait_for(client.connect(str(socket_path)), timeout)
    except Exception as exc:  # ConnectError, TimeoutError, OSError: all mean "not answering"
        with contextlib.suppress(Exception):
            await client.disconnect()
        raise RuntimeFailure(f"QMP socket {socket_path} does not answer: {exc}") from exc
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def wait_qmp(socket_path: Path, pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait until QEMU answers on QMP; ``RuntimeFailure`` if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        alive = proc.poll() is None if proc is not None else process_start_time(pid) is not None
        if not alive:
            raise RuntimeFailure("QEMU exited during start-up")
        if socket_path.exists():
            try:
                async with qmp_session(socket_path, timeout=1.0) as qmp:
                    await qmp.execute("query-status")
                return
            except RuntimeFailure:
                pass
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"QEMU did not open its QMP socket within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def host_memory_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0
