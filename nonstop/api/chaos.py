"""Chaos actions for people learning and testing: forwarded to the running lab.

Role: map ``fail host|link|guest|switch|psu|drive|nic NAME``, ``partition HOST`` and ``heal`` onto
the lab object ``nonstop up`` passes to the API (``nonstop.lab.cluster.LabCluster``), after checking
every name against the spec so a typo is a 404/422 and never a half-done fault. The lab methods
this calls (sync or async, each returning something JSON-able or None):

    fail_host(host)                  cut_link(host, nic)         partition(host)      heal()
    fail_guest(guest)                fail_switch(switch)         fail_psu(host, psu)
    fail_drive(host, drive)          fail_nic(host, nic)

``NAME`` for link/psu/drive/nic is ``HOST/PART`` (``host1/eth0``). Without a lab → 409 "chaos
needs the lab"; a lab without that method → 409 saying so.

Must not: fake a failure by writing the store — the lab breaks real things, the controller reacts.
"""

from __future__ import annotations

import asyncio
import inspect
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


async def call_lab(lab: Any, method: str, args: tuple[str, ...]) -> Any:
    if lab is None:
        raise Conflict("chaos needs the lab: this API is not running inside `nonstop up`")
    func = getattr(lab, method, None)
    if not callable(func):
        raise Conflict(f"the lab cannot do {method}")
    if inspect.iscoroutinefunction(func):
        result = await func(*args)
    else:
        result = await asyncio.to_thread(func, *args)
        if inspect.isawaitable(result):
            result = await result
    return result
