"""Break and repair hardware on purpose: ``fail_component`` for tests, the chaos CLI and the API.

Role: one plain function, ``fail_component(target, kind, host, name, failed=True)``, where
``target`` is either a BMC URL (``http://127.0.0.1:PORT``, reachable from here) or a running
lab: an object with ``fail_component(kind, host, name)`` / ``repair_component(...)``, as
``nonstop.lab.cluster.LabCluster`` has them (its BMCs listen inside the ctl namespace). Either
way the change goes through the lab BMC's private admin path
(``nonstop.bmc.client.set_component``), so the BMC's own consequences follow: a PSU failure
changes PowerSubsystem, the last PSU powers the host off for real, a NIC failure makes the Port
``LinkDown``. The lab adds its own: a NIC failure (repair) also cuts (restores) that NIC's
cable in the lab fabric, so the host's team fails over for real, and a drive failure in a lab
that runs VMs kills the servers of the mirror legs on that drive (a repair brings a blank
drive): nonstop/drivers/qemu_mirror_legs.py ``lab_set_drive``.

Must not: be pointed at a real BMC (the admin path exists only in the lab BMC), or import the
lab (it takes one as an argument).
"""

from __future__ import annotations

from typing import Any, Protocol

KINDS = ("psu", "nic", "drive", "fan")


class _Lab(Protocol):
    def fail_component(self, kind: str, host: str, name: str, *, timeout: float = ...) -> dict[str, Any]: ...

    def repair_component(self, kind: str, host: str, name: str, *, timeout: float = ...) -> dict[str, Any]: ...


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
    if failed:
        return target.fail_component(kind, host, name, timeout=timeout)
    return target.repair_component(kind, host, name, timeout=timeout)


def repair_component(target: _Lab | str, kind: str, host: str, name: str, **kwargs: Any) -> dict[str, Any]:
    return fail_component(target, kind, host, name, False, **kwargs)
