"""Render a VM's QEMU command line from data: ``MachineLayout`` + ``QemuLaunch`` → argv.

Role: the one place that knows QEMU's option syntax. The driver (``nonstop.drivers.qemu``)
builds a ``QemuLaunch`` (paths, taps, acceleration, optional incoming migration address)
and a ``MachineLayout`` (the boot-time vCPUs and memory plus every device hot-plugged
since, so a migration destination is started with exactly the source's device set), and
``render_argv`` returns the argv list. Snapshot-tested in tests/guests/snapshots/.

Layout rules that make hot-plug and migration work:
- vCPUs: ``-smp BOOT,maxcpus=MAX``; hot-added vCPUs are ``-device <cpu type>`` entries with
  their socket/core/thread ids (QEMU refuses to migrate into a differently shaped machine).
- memory: ``-m BOOT,slots=S,maxmem=MAX``; hot-added memory is one ``pc-dimm`` per step, each
  backed by its own ``memory-backend-ram`` (RAM block names must match on both sides).
- the kernel command line carries ``nonstop.guest``/``nonstop.host`` and one
  ``nonstop.ip=IFACE:ADDRESS/PREFIX[:GATEWAY]`` per vNIC with an address (the built-in
  image's init applies them; see nonstop/image/guest/rcS.sh).

Must not: touch files, processes or the clock; choose paths or names (the caller does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MIB = 1024**2
DIMM_ALIGN = 128 * MIB
"""x86 memory hot-plug works in 128 MiB blocks: boot memory and every DIMM are multiples."""
MAX_DIMM_SLOTS = 16
CPU_DRIVER = "qemu64-x86_64-cpu"


# Fixed PCI slots so the two ends of a migration agree on every device's address:
# 0 host bridge, 1 PIIX, 2 the host-info serial port, 3-10 vNICs, 11-26 disks.
# (No virtio-balloon: with free page reporting, guests panicked after live migrations under
# load — every ping-pong run of 16 failed with it, 48 migrations passed without it.)
PCI_SLOT_SERIAL = 0x02
PCI_FIRST_NIC, MAX_NICS = 0x03, 8
PCI_FIRST_DISK, MAX_DISKS = 0x0B, 16
HOST_PORT_NAME = "org.nonstop.host"


def nic_slot(index: int) -> int:
    return PCI_FIRST_NIC + index


def disk_slot(index: int) -> int:
    return PCI_FIRST_DISK + index


class LayoutError(ValueError):
    """The requested machine cannot be expressed (misaligned memory, too many vCPUs ...)."""


@dataclass(frozen=True)
class CpuDevice:
    """A hot-plugged vCPU: its QOM id and topology position."""

    id: str
    socket_id: int
    core_id: int = 0
    thread_id: int = 0
    driver: str = CPU_DRIVER


@dataclass(frozen=True)
class DimmDevice:
    """A hot-plugged memory module (a ``pc-dimm`` on its own RAM backend)."""

    id: str
    size: int


@dataclass(frozen=True)
class MachineLayout:
    """The VM's shape: what it booted with plus what was hot-plugged since (in order)."""

    boot_vcpus: int
    max_vcpus: int
    boot_memory: int
    max_memory: int
    cpus: tuple[CpuDevice, ...] = ()
    dimms: tuple[DimmDevice, ...] = ()

    @property
    def vcpus(self) -> int:
        return self.boot_vcpus + len(self.cpus)

    @property
    def memory(self) -> int:
        return self.boot_memory + sum(d.size for d in self.dimms)

    @property
    def memory_slots(self) -> int:
        # One slot per 128 MiB step of headroom, capped: QEMU reserves ACPI space per slot.
        if self.max_memory <= self.boot_memory:
            return 0
        return min(MAX_DIMM_SLOTS, (self.max_memory - self.boot_memory) // DIMM_ALIGN)

    def to_dict(self) -> dict[str, object]:
        return {
            "boot_vcpus": self.boot_vcpus,
            "max_vcpus": self.max_vcpus,
            "boot_memory": self.boot_memory,
            "max_memory": self.max_memory,
            "cpus": [
                {"id": c.id, "socket_id": c.socket_id, "core_id": c.core_id, "thread_id": c.thread_id,
                 "driver": c.driver}
                for c in self.cpus
            ],
            "dimms": [{"id": d.id, "size": d.size} for d in self.dimms],
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> MachineLayout:
        cpus = data.get("cpus", [])
        dimms = data.get("dimms", [])
        assert isinstance(cpus, list) and isinstance(dimms, list)
        return cls(
            boot_vcpus=_int(data["boot_vcpus"]),
            max_vcpus=_int(data["max_vcpus"]),
            boot_memory=_int(data["boot_memory"]),
            max_memory=_int(data["max_memory"]),
            cpus=tuple(
                CpuDevice(id=str(c["id"]), socket_id=_int(c["socket_id"]), core_id=_int(c["core_id"]),
                          thread_id=_int(c["thread_id"]), driver=str(c.get("driver", CPU_DRIVER)))
                for c in cpus
            ),
            dimms=tuple(DimmDevice(id=str(d["id"]), size=_int(d["size"])) for d in dimms),
        )


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise LayoutError(f"expected an integer, got {value!r}")
    return int(value)


def initial_layout(vcpus: int, max_vcpus: int, memory: int, max_memory: int) -> MachineLayout:
    """The layout a fresh boot uses; raises ``LayoutError`` for a shape QEMU cannot hot-plug."""
    if vcpus < 1 or max_vcpus < vcpus:
        raise LayoutError(f"need 1 <= vcpus ({vcpus}) <= max_vcpus ({max_vcpus})")
    if max_vcpus > 255:
        raise LayoutError(f"max_vcpus {max_vcpus} is above the pc machine's 255")
    if memory < 64 * MIB:
        raise LayoutError(f"memory {memory // MIB} MiB is below the 64 MiB a VM needs")
    if memory % MIB:
        raise LayoutError("memory must be a whole number of MiB")
    if max_memory < memory:
        raise LayoutError("max_memory is below memory")
    if max_memory > memory and (max_memory - memory) % DIMM_ALIGN:
        raise LayoutError(
            f"max_memory - memory must be a multiple of 128 MiB for hot-plug, got {(max_memory - memory) // MIB} MiB"
        )
    return MachineLayout(boot_vcpus=vcpus, max_vcpus=max_vcpus, boot_memory=memory, max_memory=max_memory)


def plan_vcpus(layout: MachineLayout, target: int, free_slots: list[tuple[int, int, int]]) -> list[CpuDevice]:
    """The vCPU devices to add to reach ``target`` vCPUs, taking ``(socket, core, thread)``
    positions from ``free_slots`` (QEMU's query-hotpluggable-cpus, unused entries) in order.
    Raises ``LayoutError`` above ``max_vcpus`` or when asked to remove (see ``plan_vcpu_removal``)."""
    if target > layout.max_vcpus:
        raise LayoutError(f"vcpus {target} is above max_vcpus {layout.max_vcpus}")
    if target < layout.vcpus:
        raise LayoutError(f"removing vCPUs ({layout.vcpus} -> {target}) is an unplug, not a plug")
    needed = target - layout.vcpus
    if needed > len(free_slots):
        raise LayoutError(f"only {len(free_slots)} free vCPU slots for {needed} more vCPUs")
    used = {c.id for c in layout.cpus}
    devices: list[CpuDevice] = []
    index = layout.vcpus
    for socket_id, core_id, thread_id in sorted(free_slots)[:needed]:
        while f"vcpu{index}" in used:
            index += 1
        devices.append(CpuDevice(id=f"vcpu{index}", socket_id=socket_id, core_id=core_id, thread_id=thread_id))
        used.add(f"vcpu{index}")
        index += 1
    return devices


def plan_vcpu_removal(layout: MachineLayout, target: int) -> list[CpuDevice]:
    """The hot-plugged vCPU devices to unplug (newest first) to come down to ``target``.
    Boot vCPUs are not devices and stay: ``LayoutError`` below ``boot_vcpus``."""
    if target < layout.boot_vcpus:
        raise LayoutError(f"vcpus {target} is below the {layout.boot_vcpus} the guest booted with: "
                          "only hot-plugged vCPUs can be removed live")
    return list(reversed(layout.cpus[target - layout.boot_vcpus:]))


def plan_memory_removal(layout: MachineLayout, target: int) -> list[DimmDevice]:
    """The hot-plugged DIMMs to unplug (newest first) to come down to ``target`` bytes: the
    newest DIMMs whose sizes add up exactly. ``LayoutError`` below boot memory or when no
    run of newest DIMMs matches."""
    if target < layout.boot_memory:
        raise LayoutError(f"memory {target // MIB} MiB is below the {layout.boot_memory // MIB} MiB the guest "
                          "booted with: only hot-plugged memory can be removed live")
    removed: list[DimmDevice] = []
    remaining = layout.memory
    for dimm in reversed(layout.dimms):
        if remaining <= target:
            break
        removed.append(dimm)
        remaining -= dimm.size
    if remaining != target:
        raise LayoutError(f"memory can only shrink by whole hot-plugged DIMMs, newest first "
                          f"({[d.size // MIB for d in layout.dimms]} MiB); {target // MIB} MiB is not reachable")
    return removed


def plan_memory(layout: MachineLayout, target: int) -> DimmDevice | None:
    """The one DIMM that brings the guest to ``target`` bytes (None if already there)."""
    if target > layout.max_memory:
        raise LayoutError(f"memory {target // MIB} MiB is above max_memory {layout.max_memory // MIB} MiB")
    if target < layout.memory:
        raise LayoutError(f"removing memory ({layout.memory // MIB} -> {target // MIB} MiB) is an unplug, not a plug")
    if target == layout.memory:
        return None
    step = target - layout.memory
    if step % DIMM_ALIGN:
        raise LayoutError(f"memory can only grow in 128 MiB steps, asked for {step // MIB} MiB")
    if len(layout.dimms) >= layout.memory_slots:
        raise LayoutError(f"all {layout.memory_slots} memory slots are used")
    return DimmDevice(id=f"dimm{len(layout.dimms)}", size=step)


@dataclass(frozen=True)
class DiskAttachment:
    name: str
    path: str
    format: str
    """``qcow2`` or ``raw``."""
    slot: int | None = None
    """Index into the disk PCI slots; None = its position (hot-plugged disks keep theirs)."""


@dataclass(frozen=True)
class NicAttachment:
    tap: str
    mac: str
    address: str | None = None
    gateway: str | None = None
    slot: int | None = None
    """Index into the vNIC PCI slots; None = its position (hot-plugged vNICs keep theirs)."""


@dataclass(frozen=True)
class QemuLaunch:
    """Everything but the machine layout that a QEMU process needs."""

    guest: str
    host: str
    kernel: str
    initrd: str
    qmp_socket: str
    console_log: str
    pid_file: str
    accel: str = "tcg"
    disks: tuple[DiskAttachment, ...] = ()
    nics: tuple[NicAttachment, ...] = ()
    incoming: str | None = None
    """``defer`` (then QMP migrate-incoming) or a URI like ``tcp:198.18.10.2:49152``."""
    status_socket: str | None = None
    """A second QMP monitor for read-only status queries, so observing a guest never waits
    behind a long operation (a migration holds the main QMP socket while it polls)."""
    host_channel: str | None = None
    """Unix socket of the ``org.nonstop.host`` virtio-serial port: the driver writes
    ``host=NAME`` into it (after a migration) so the guest's page names its current host."""
    extra_append: tuple[str, ...] = ()
    tcg_tb_mib: int = 64
    """TCG translation cache: QEMU's 1 GiB default is mostly untouched but shows up in RSS."""
    options: dict[str, str] = field(default_factory=dict)


BASE_APPEND = (
    "console=ttyS0",
    "quiet",
    "panic=-1",
    # Hot-added memory holds only movable pages, so the guest can empty and eject a DIMM again
    # (memory unplug); the kernel's own data stays in boot memory.
    "memhp_default_state=online_movable",
    # Skip probes that cost seconds under TCG and find nothing on our machine.
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "tsc=reliable",
    "no_timer_check",
)


def kernel_append(launch: QemuLaunch) -> str:
    words = [*BASE_APPEND, f"nonstop.guest={launch.guest}", f"nonstop.host={launch.host}"]
    for index, nic in enumerate(launch.nics):
        if nic.address:
            # The guest names NICs in PCI order, which is slot order.
            eth = sorted(_slots(launch.nics)).index(_slot(nic, index))
            words.append(f"nonstop.ip=eth{eth}:{nic.address}" + (f":{nic.gateway}" if nic.gateway else ""))
    words.extend(launch.extra_append)
    for word in words:
        if any(ch.isspace() for ch in word):
            raise LayoutError(f"kernel command line word has whitespace: {word!r}")
    return " ".join(words)


TCG_RAM_SHORTFALL = 8192
"""Under TCG the boot RAM block is rendered 8 KiB short of the guest's memory (QEMU rounds
``-m`` up to a multiple of 8 KiB, so one 4 KiB page short would be rounded back to the full
size; the driver rounds QEMU's reported base memory back up to whole MiB).

Why: QEMU 7.2 syncs a RAM block's migration dirty bitmap on a fast path when the block's
length is a multiple of 64 pages, and that path clears the dirty bits without re-arming the
vCPUs' TLB write tracking (only the per-page path calls ``tlb_reset_dirty_range_all``). A vCPU
that keeps writing through a TLB entry cached before the sync — an idle vCPU's timer and RCU
interrupts writing its per-CPU data, which no CR3 reload flushes — is then not seen, and the
destination runs with stale pages: the guest kernel crashes seconds after a live migration
(hrtimer/RCU list corruption in interrupt context). Measured by migrating into a paused
destination and comparing both RAM images (docs/guests-vm.md): differing pages in about one
migration of three with a 256 MiB block, none with a block 8 KiB off the 256 KiB multiple.
Hot-plugged DIMMs keep whole sizes (the guest hot-adds 128 MiB blocks only), so a guest
with DIMMs is migrated paused under TCG (nonstop.drivers.qemu.PAUSED_MIGRATION_REASON)."""


def boot_memory_arg(layout: MachineLayout, accel: str) -> str:
    """The ``-m`` value: boot size (TCG: 8 KiB short, see ``TCG_RAM_SHORTFALL``), slots, maxmem."""
    if accel == "tcg":
        memory = f"{(layout.boot_memory - TCG_RAM_SHORTFALL) // 1024}k"
    else:
        memory = f"{layout.boot_memory // MIB}M"
    if layout.memory_slots:
        memory += f",slots={layout.memory_slots},maxmem={layout.max_memory // MIB}M"
    return memory


def render_argv(launch: QemuLaunch, layout: MachineLayout, binary: str = "qemu-system-x86_64") -> list[str]:
    """The full argv (binary first) for ``launch`` with ``layout``."""
    accel = launch.accel if launch.accel != "tcg" else f"tcg,tb-size={launch.tcg_tb_mib}"
    memory = boot_memory_arg(layout, launch.accel)
    argv = [
        binary,
        "-name", f"guest={launch.guest},debug-threads=on",
        "-machine", "pc",
        "-accel", accel,
        "-cpu", "max" if launch.accel == "kvm" else "qemu64",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-smp", f"{layout.boot_vcpus},maxcpus={layout.max_vcpus}",
        "-m", memory,
        "-kernel", launch.kernel,
        "-initrd", launch.initrd,
        "-append", kernel_append(launch),
        "-chardev", f"file,id=console,path={launch.console_log}",
        "-serial", "chardev:console",
        "-qmp", f"unix:{launch.qmp_socket},server=on,wait=off",
        *(["-qmp", f"unix:{launch.status_socket},server=on,wait=off"] if launch.status_socket else []),
        "-pidfile", launch.pid_file,
        "-no-reboot",
    ]
    if launch.host_channel is not None:
        _check_option_value(launch.host_channel)
        argv += [
            "-device", f"virtio-serial-pci,id=vser0,addr={PCI_SLOT_SERIAL:#04x}",
            "-chardev", f"socket,id=hostinfo,path={launch.host_channel},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=hostinfo,name={HOST_PORT_NAME}",
        ]
    for cpu in layout.cpus:
        argv += ["-device", f"{cpu.driver},id={cpu.id},socket-id={cpu.socket_id},core-id={cpu.core_id},"
                            f"thread-id={cpu.thread_id}"]
    for dimm in layout.dimms:
        argv += ["-object", f"memory-backend-ram,id=mem-{dimm.id},size={dimm.size // MIB}M",
                 "-device", f"pc-dimm,id={dimm.id},memdev=mem-{dimm.id}"]
    if len(launch.disks) > MAX_DISKS or len(launch.nics) > MAX_NICS:
        raise LayoutError(f"at most {MAX_NICS} vNICs and {MAX_DISKS} disks per VM")
    for slots in (_slots(launch.disks), _slots(launch.nics)):
        if len(set(slots)) != len(slots) or any(not 0 <= n < 16 for n in slots):
            raise LayoutError(f"device slots must be distinct and in range, got {slots}")
    for index, disk in enumerate(launch.disks):
        _check_option_value(disk.path)
        argv += [
            "-blockdev",
            f"driver=file,filename={disk.path},node-name=file-{disk.name},cache.direct=off",
            "-blockdev", f"driver={disk.format},file=file-{disk.name},node-name=disk-{disk.name}",
            "-device", disk_device_arg(disk, _slot(disk, index)),
        ]
    for index, nic in enumerate(launch.nics):
        slot = _slot(nic, index)
        argv += [
            "-netdev", f"tap,id=net{slot},ifname={nic.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net{slot},id=nic{slot},mac={nic.mac},addr={nic_slot(slot):#04x}",
        ]
    if launch.incoming is not None:
        argv += ["-incoming", launch.incoming]
    for key, value in sorted(launch.options.items()):
        argv += [key, value] if value else [key]
    return argv


def disk_device_arg(disk: DiskAttachment, slot: int) -> str:
    return f"virtio-blk-pci,drive=disk-{disk.name},id=blk-{disk.name},serial={disk.name},addr={disk_slot(slot):#04x}"


def disk_device_props(disk: DiskAttachment, slot: int) -> dict[str, str]:
    """The same device as QMP ``device_add`` arguments (hot-plug)."""
    return {"driver": "virtio-blk-pci", "drive": f"disk-{disk.name}", "id": f"blk-{disk.name}",
            "serial": disk.name, "addr": f"{disk_slot(slot):#04x}"}


def nic_device_props(nic: NicAttachment, slot: int) -> dict[str, str]:
    return {"driver": "virtio-net-pci", "netdev": f"net{slot}", "id": f"nic{slot}", "mac": nic.mac,
            "addr": f"{nic_slot(slot):#04x}"}


def free_slot(used: list[int], limit: int) -> int:
    """The lowest device slot index not in ``used``; ``LayoutError`` when all ``limit`` are taken."""
    for slot in range(limit):
        if slot not in used:
            return slot
    raise LayoutError(f"all {limit} device slots are in use")


def _slot(device: DiskAttachment | NicAttachment, index: int) -> int:
    return device.slot if device.slot is not None else index


def _slots(devices: Sequence[DiskAttachment | NicAttachment]) -> list[int]:
    return [_slot(d, i) for i, d in enumerate(devices)]


def _check_option_value(value: str) -> None:
    # QEMU's option syntax splits on commas; a comma in a path would silently change meaning.
    if "," in value:
        raise LayoutError(f"path {value!r} contains a comma, which QEMU options cannot carry")
