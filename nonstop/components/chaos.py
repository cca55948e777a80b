"""Break and repair hardware on purpose: ``fail_component`` for tests, the chaos CLI and the API.

Role: one plain function, ``fail_component(target, kind, host, name, failed=True)``, where
``target`` is either a running ``LabCluster`` (its BMCs listen on 127.0.0.1 inside the ctl
namespace; credentials from the lab's password file) or a BMC URL
(``http://127.0.0.1:PORT``, reachable from here). It goes through the lab BMC's private admin
path (``nonstop.bmc.client.set_component``), so the BMC's own consequences follow: a PSU
failure changes PowerSubsystem, the last PSU powers the host off for real, a NIC failure
makes the Port ``LinkDown``. With a ``LabCluster`` a NIC failure (repair) also cuts
(restores) that NIC's cable in the lab fabric, so the host's team fails over for real —
idempotent with a BMC whose ``on_nic`` hook already does it. Likewise a drive failure in a lab
that runs VMs kills the servers of the mirror legs on that drive (a repair brings a blank
drive): nonstop/drivers/qemu_mirror_legs.py ``lab_set_drive``.

Must not: be pointed at a real BMC (the admin path exists only in the lab BMC).
"""

from __future__ import annotations

from typing import Any, Protocol

KINDS = ("psu", "nic", "drive", "fan")


class _Lab(Protocol):
    spec: Any
    cluster: str
    bmc_ports: dict[str, int]
    password_file: Any


def parse_target(text: str) -> tuple[str, str]:
    """``host1/PSU1`` → ("host1", "PSU1") (the chaos CLI's argument form)."""
    host, sep, name = text.partition("/")
    if not sep or not host or not name:
        raise ValueError(f"expected HOST/COMPONENT, got {text!r}")
    return host, name


def fail_component(target: _Lab | str, kind: str, host: str, name: str, failed: bool = True, *,
                   username: str = "admin", password: str = "password", timeout: float = 5.0) -> dict[str, Any]:
    """Fail (or with ``failed=False`` repair) one PSU, NIC, drive or fan of ``host``; the BMC's
    state summary afterwards (``{"host", "power", "health", "failed": [...]}``)."""
    from nonstop.bmc.client import set_component

    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r} (one of {', '.join(KINDS)})")
    if isinstance(target, str):
        return set_component(target, kind, name, failed, username=username, password=password, timeout=timeout)
    from nonstop.lab import faults, names
    from nonstop.net import netns

    lab = target
    if host not in lab.bmc_ports:
        raise KeyError(f"no BMC for host {host!r} in lab {lab.cluster}")
    url = f"http://127.0.0.1:{lab.bmc_ports[host]}"
    user = lab.spec.host(host).bmc.username
    secret = lab.password_file.read_text().strip()
    with netns.inside(names.ctl_ns(lab.cluster)) as thread:
        result = thread.call(set_component, url, kind, name, failed, username=user, password=secret, timeout=timeout)
    if kind == "nic" and result.get("power") != "Off":
        (faults.cut if failed else faults.restore)(lab.spec, host, name)
    if kind == "drive" and "qemu" in str(getattr(lab, "drivers", "")):
        # The lab's drives are directories; the drive dies for real: its mirror legs' servers.
        from nonstop.drivers.qemu_mirror_legs import lab_set_drive

        lab_set_drive(lab.cluster, host, name, failed)
    return result


def repair_component(target: _Lab | str, kind: str, host: str, name: str, **kwargs: Any) -> dict[str, Any]:
    return fail_component(target, kind, host, name, False, **kwargs)
