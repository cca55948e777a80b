"""Chaos actions for people learning and testing: forwarded to the running lab.

Role: map ``fail host|link|guest|switch|psu|drive|nic NAME``, ``partition HOST`` and ``heal`` onto
the lab ``nonstop up`` passes to the API, after checking every name against the spec so a typo is
a 404 and never a half-done fault. ``LabChaos`` adapts a ``nonstop.lab.cluster.LabCluster``:

    host    lab.fail_host(host)  (Redfish ForceOff through the host's BMC)
    link    lab.cut_link(host, nic)
    switch  lab.cut_link(h, n) for every NIC cabled to that switch (all its ports go dark)
    psu / drive / nic   lab.fail_component(kind, host, name) (through the host's lab BMC)
    guest   SIGKILL of the guest's process (pid from its observed record; only a process in a
            ``nonstop`` cgroup is ever signalled)
    partition   lab.partition(host)
    heal    every fault injected through this API undone: lab.heal(h) for every host (partition and
            cables), power_on of hosts failed here, lab.repair_component of components failed here

A lab object that already has a method of the exact name (``fail_switch``, ``heal()`` with no
arguments, ...) is called directly. Without a lab → 409 "chaos needs the lab".

Must not: fake a failure by writing the store — the lab breaks real things, the controller reacts.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import threading
from typing import Any

from nonstop.api.actions import Conflict, Invalid, NotFound
from nonstop.core.spec import ClusterSpec

TARGETS = ("host", "link", "guest", "switch", "psu", "drive", "nic")


def plan(spec: ClusterSpec, guests: list[str], target: str, name: str) -> tuple[str, tuple[str, ...]]:
    """The lab method and its arguments for one chaos action; raises NotFound/Invalid on bad names."""
    hosts = {h.name: h for h in spec.hosts}
    if target == "host":
        if name not in hosts:
            raise NotFound(f'no host "{name}"; expected one of: {", ".join(hosts)}', field="name")
        return "fail_host", (name,)
    if target == "guest":
        if name not in guests:
            raise NotFound(f'no guest "{name}"', field="name")
        return "fail_guest", (name,)
    if target == "switch":
        if name not in spec.switches:
            raise NotFound(f'no switch "{name}"; expected one of: {", ".join(spec.switches)}', field="name")
        return "fail_switch", (name,)
    if target not in TARGETS:
        raise Invalid(f'unknown target "{target}"; expected one of: {", ".join(TARGETS)}', field="target")
    host_name, sep, part = name.partition("/")
    if not sep or not part:
        raise NotFound(f'no {target} "{name}": expected HOST/{target.upper()} (like host1/eth0)', field="name")
    host = hosts.get(host_name)
    if host is None:
        raise NotFound(f'no host "{host_name}"; expected one of: {", ".join(hosts)}', field="name")
    parts = {"link": [n.name for n in host.nics], "nic": [n.name for n in host.nics],
             "psu": [p.name for p in host.power_supplies], "drive": [d.name for d in host.drives]}[target]
    if part not in parts:
        raise NotFound(f'{host_name} has no {target} "{part}"; expected one of: {", ".join(parts)}', field="name")
    method = {"link": "cut_link", "nic": "fail_nic", "psu": "fail_psu", "drive": "fail_drive"}[target]
    return method, (host_name, part)


class LabChaos:
    """A uniform chaos surface over a lab object, remembering what it broke so ``heal`` can undo it."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self._lock = threading.Lock()
        self.failed_hosts: set[str] = set()
        self.cut_links: set[tuple[str, str]] = set()
        self.failed_switches: set[str] = set()
        self.partitioned: set[str] = set()
        self.components: set[tuple[str, str, str]] = set()
        self.killed_guests: list[str] = []

    def faults(self) -> dict[str, Any]:
        own = getattr(self.lab, "faults", None)
        extra = own() if callable(own) else {}
        return {
            "hosts": sorted(self.failed_hosts | set(extra.get("hosts", ()))),
            "links": sorted(f"{h}/{n}" for h, n in self.cut_links),
            "switches": sorted(self.failed_switches | set(extra.get("switches", ()))),
            "partitioned": sorted(self.partitioned),
            "components": sorted(f"{h}/{k}/{n}" for h, k, n in self.components),
            "killed_guests": list(self.killed_guests[-20:]),
        }

    def _direct(self, method: str) -> Any:
        func = getattr(self.lab, method, None)
        return func if callable(func) else None

    def run(self, method: str, args: tuple[str, ...], spec: ClusterSpec | None = None,
            guest_pid: int | None = None) -> Any:
        """Do one chaos action (blocking; call it from a thread)."""
        with self._lock:
            direct = self._direct(method)
            if method == "heal":
                if direct is not None and not inspect.signature(direct).parameters:
                    result = direct()
                    self._forget()
                    return result
                return self._heal_all(spec)
            if direct is not None:
                result = direct(*args)
            elif method == "fail_switch" and spec is not None and self._direct("cut_link"):
                result = self._fail_switch(spec, args[0])
            elif method in ("fail_psu", "fail_drive", "fail_nic") and self._direct("fail_component"):
                kind = method.removeprefix("fail_")
                result = self.lab.fail_component(kind, args[0], args[1])
                self.components.add((args[0], kind, args[1]))
            elif method == "fail_guest":
                result = self._kill_guest(args[0], guest_pid)
            else:
                raise Conflict(f"the lab cannot do {method}")
            self._remember(method, args)
            return result

    def _remember(self, method: str, args: tuple[str, ...]) -> None:
        if method == "fail_host":
            self.failed_hosts.add(args[0])
        elif method == "cut_link":
            self.cut_links.add((args[0], args[1]))
        elif method == "partition":
            self.partitioned.add(args[0])
        elif method == "fail_switch":
            self.failed_switches.add(args[0])
        elif method == "fail_guest":
            self.killed_guests.append(args[0])

    def _forget(self) -> None:
        self.failed_hosts.clear()
        self.cut_links.clear()
        self.failed_switches.clear()
        self.partitioned.clear()
        self.components.clear()

    def _fail_switch(self, spec: ClusterSpec, switch: str) -> dict[str, Any]:
        cut = []
        for host in spec.hosts:
            for i, nic in enumerate(host.nics):
                if spec.nic_switch(host, i) == switch:
                    self.lab.cut_link(host.name, nic.name)
                    self.cut_links.add((host.name, nic.name))
                    cut.append(f"{host.name}/{nic.name}")
        return {"switch": switch, "cut": cut}

    def _kill_guest(self, guest: str, pid: int | None) -> dict[str, Any]:
        if not pid:
            raise Conflict(f"{guest} has no running process reported; nothing to kill")
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                cgroups = f.read()
        except OSError as exc:
            raise Conflict(f"{guest}'s process {pid} is gone") from exc
        if "nonstop" not in cgroups:
            raise Conflict(f"process {pid} is not in a nonstop cgroup; refusing to signal it")
        os.kill(pid, signal.SIGKILL)
        return {"guest": guest, "killed_pid": pid}

    def _heal_all(self, spec: ClusterSpec | None) -> dict[str, Any]:
        done: list[str] = []
        errors: list[str] = []

        def attempt(label: str, func: Any, *a: Any) -> None:
            try:
                func(*a)
                done.append(label)
            except Exception as exc:  # noqa: BLE001 - heal as much as possible, report the rest
                errors.append(f"{label}: {exc}")

        healed_hosts: set[str] = set()
        if spec is not None and self._direct("heal"):
            for spec_host in spec.hosts:
                attempt(f"heal {spec_host.name}", self.lab.heal, spec_host.name)  # partition and every cable
                healed_hosts.add(spec_host.name)
        for host, nic in sorted(self.cut_links):
            if host not in healed_hosts and self._direct("restore_link"):
                attempt(f"restore {host}/{nic}", self.lab.restore_link, host, nic)
        if self.components and self._direct("repair_component"):
            for host, kind, name in sorted(self.components):
                attempt(f"repair {host}/{kind}/{name}", self.lab.repair_component, kind, host, name)
        for host in sorted(self.failed_hosts):
            if self._direct("power_on"):
                attempt(f"power on {host}", self.lab.power_on, host)
        self._forget()
        return {"done": done, "errors": errors}


async def call_lab(chaos: LabChaos | None, method: str, args: tuple[str, ...], spec: ClusterSpec | None = None,
                   guest_pid: int | None = None) -> Any:
    if chaos is None:
        raise Conflict("chaos needs the lab: this API is not running inside `nonstop up`")
    direct = getattr(chaos.lab, method, None)
    if method != "heal" and callable(direct) and inspect.iscoroutinefunction(direct):
        result = await direct(*args)
        chaos._remember(method, args)
        return result
    if method == "heal" and callable(direct) and inspect.iscoroutinefunction(direct) \
            and not inspect.signature(direct).parameters:
        result = await direct()
        chaos._forget()
        return result
    result = await asyncio.to_thread(chaos.run, method, args, spec, guest_pid)
    if inspect.isawaitable(result):
        result = await result
    return result
