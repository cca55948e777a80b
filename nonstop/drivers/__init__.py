"""Hypervisor drivers, registered by name in an explicit dict.

Role: map a guest ``kind``/driver name to its ``Driver`` class. ``fake`` and ``process`` are
imported eagerly (stdlib + pyroute2 only); ``qemu`` is imported on first use because it pulls
in qemu.qmp and is written separately.

Must not: hold driver logic, or pick a driver from the environment implicitly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nonstop.drivers.base import Driver

# name -> "module:Class"; imported lazily so a missing optional driver only fails when used.
DRIVERS: dict[str, str] = {
    "fake": "nonstop.drivers.fake:FakeDriver",
    "process": "nonstop.drivers.process:ProcessDriver",
    "qemu": "nonstop.drivers.qemu:QemuDriver",
}

# The spec's guest kinds map onto drivers.
KIND_TO_DRIVER: dict[str, str] = {"process": "process", "vm": "qemu"}


def driver_class(name: str) -> type[Driver]:
    """The ``Driver`` subclass registered as ``name``; KeyError for an unknown name."""
    module_name, _, class_name = DRIVERS[name].partition(":")
    module = importlib.import_module(module_name)
    cls: type[Driver] = getattr(module, class_name)
    return cls
