"""The availability tour: constant load through a balancer while a host dies, a link is cut, a host
is partitioned, and everything heals; a report of what the clients saw and what the controller did.

Role: ``run_tour`` uses the running ``nonstop up`` of the spec's cluster, or starts one (a child
``nonstop up`` process, timed until serving, stopped with ``nonstop down`` at the end, timed too);
injects faults through the cluster's API (``/api/v1/chaos/...``, as a person would), waits after
each for recovery as the controller's event log records it (bounded waits), and hands the samples
and events to ``nonstop.demo.report``.

Must not: inject faults other than through the API; wait without a bound; load anything but the
service's 127.0.0.1 port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nonstop.core.spec import ClusterSpec
from nonstop.demo.load import LoadRun
from nonstop.store.records import EventRecord
from nonstop.up import runfiles

Say = Callable[[str], None]
UP_TIMEOUT = 400.0
STEADY_TIMEOUT = 180.0
RATE_PROCESS = 40.0
RATE_VM = 10.0
PATH_PROCESS = "/"
PATH_VM = "/health"
"""Default load: 40 new connections/s of ``GET /`` for process replicas; for VM replicas, which run
under emulation (TCG) on the lab machine, 10/s of ``GET /health`` — a static file. The guest's
``/`` is a CGI shell script (a dozen forks per request): emulated, it takes 0.4-2.5 s each on a
loaded 2-core machine, so three VMs saturate at ~3 requests/s in all and fail before any fault
(measured: docs/demo.md). Static content is what a web tier serves most."""


def _service_kind(spec: ClusterSpec, service: str) -> str:
    group = next((s.backends.group for s in spec.services if s.name == service and s.backends), None)
    return next((g.kind.value for g in spec.guests if g.name == group), "process")


def default_rate(spec: ClusterSpec, service: str) -> float:
    return RATE_VM if _service_kind(spec, service) == "vm" else RATE_PROCESS


def default_path(spec: ClusterSpec, service: str) -> str:
    return PATH_VM if _service_kind(spec, service) == "vm" else PATH_PROCESS


class TourError(RuntimeError):
    pass


def start_up(spec_file: Path, cluster: str, say: Say, log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    """A child ``nonstop up`` until it prints its summary; (process, seconds to serving)."""
    began = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 (handed to the child)
    proc = subprocess.Popen([sys.executable, "-m", "nonstop.cli.main", "up", str(spec_file)],  # noqa: S603
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    log.close()
    shown = 0
    while time.monotonic() - began < UP_TIMEOUT:
        text = log_path.read_text(errors="replace")
        for line in text[shown:].splitlines():
            say(f"  up: {line}")
        shown = len(text)
        if "Ctrl-C or `nonstop down`" in text:
            return proc, time.monotonic() - began
        if proc.poll() is not None:
            raise TourError(f"`nonstop up` exited with {proc.returncode} (log {log_path})")
        time.sleep(0.3)
    proc.terminate()
    raise TourError(f"`nonstop up` was not serving after {UP_TIMEOUT:.0f} s (log {log_path})")


def stop_up(proc: subprocess.Popen[bytes] | None, cluster: str) -> float:
    """``nonstop down`` (signal the recorded pid, wait for it to remove everything); seconds."""
    began = time.monotonic()
    rec = runfiles.running(cluster)
    if rec is not None:
        runfiles.signal_and_wait(int(rec["pid"]), 120)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    runfiles.clean_leftovers(cluster)
    return time.monotonic() - began


class Tour:
    def __init__(self, spec: ClusterSpec, record: dict[str, Any], service: str, say: Say, rate: float,
                 interactive: bool, path: str = "/") -> None:
        from nonstop.api.client import ApiClient

        self.spec, self.record, self.service, self.say = spec, record, service, say
        self.api = ApiClient.discover(None, spec.cluster, None)
        self.port = int(str(record["services"][service]).rpartition(":")[2])
        self.rate = rate
        self.path = path
        self.interactive = interactive
        self.steps: list[dict[str, Any]] = []
        self.settles: list[dict[str, Any]] = []
        group = next(s.backends.group for s in spec.services if s.name == service and s.backends)
        self.group = group
        self.replicas = next(g.replicas for g in spec.guests if g.name == group)

    # ------------------------------------------------------------------ store reads

    async def _store(self) -> Any:
        from nonstop.store import open_store

        return open_store(self.record["store"])

    async def events(self, since: float) -> list[EventRecord]:
        from nonstop.store.events import read_events

        store = await self._store()
        try:
            return [e for e in await read_events(store, self.spec.cluster) if e.at >= since]
        finally:
            await store.close()

    async def placement(self) -> dict[str, str]:
        from nonstop.store.cluster_records import read_guests

        store = await self._store()
        try:
            return {name: str(rec.observed.host) for name, rec in (await read_guests(store, self.spec.cluster)).items()
                    if rec.observed is not None and rec.observed.state == "running"}
        finally:
            await store.close()

    async def serving_backends(self) -> int:
        from nonstop.store import keys
        from nonstop.store.records import ServiceBackends, read_or_none

        store = await self._store()
        try:
            stored = await read_or_none(store, keys.service_backends(self.spec.cluster, self.service), ServiceBackends)
            return len(stored.backends) if stored is not None else 0
        finally:
            await store.close()

    async def wait_event(self, kinds: tuple[str, ...], subject: str, since: float, timeout: float,
                         match: Callable[[EventRecord], bool] = lambda e: True) -> EventRecord | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in await self.events(since):
                if e.kind in kinds and e.subject == subject and match(e):
                    return e
            await asyncio.sleep(0.2)
        return None

    async def wait_full(self, timeout: float) -> float | None:
        """Wall time when the service holds every replica again (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.serving_backends() >= self.replicas:
                return time.time()
            await asyncio.sleep(0.2)
        return None

    async def steady(self, why: str, timeout: float = STEADY_TIMEOUT) -> dict[str, Any]:
        """Wait until every host is ``up`` and the service holds every replica; a host left off (a
        fence — also a false one while the lab started on a loaded machine) is powered on through
        its BMC first. What it took goes into the report."""
        began = time.monotonic()
        powered: list[str] = []
        not_up: dict[str, str] = {}
        while time.monotonic() - began < timeout:
            hosts = await asyncio.to_thread(self.api.get, "/hosts")
            not_up = {h["name"]: h["state"] for h in hosts if h["state"] != "up"}
            for name in not_up:
                if name not in powered and await asyncio.to_thread(self._power_on_if_off, name):
                    powered.append(name)
                    self.say(f"  {name} was off ({not_up[name]}): powered on through its BMC")
            if not not_up and await self.serving_backends() >= self.replicas:
                break
            await asyncio.sleep(0.5)
        else:
            raise TourError(f"the cluster is not steady {why} after {timeout:.0f} s: hosts {not_up}")
        if powered and self.spec.policies.ha.failback.value != "manual":
            # Its guests come home after the failback stability window: let that happen now, not
            # in the middle of the next fault's window.
            for name in powered:
                await self.wait_event(("failback",), name, time.time() - 5,
                                      float(self.spec.policies.ha.failback_stability) + 30)
            await self.wait_full(60)
        took = round(time.monotonic() - began, 2)
        if powered or took > 1:
            self.say(f"  steady {why} after {took} s" + (f" (powered on {', '.join(powered)})" if powered else ""))
        return {"why": why, "seconds": took, "powered_on": powered}

    # ------------------------------------------------------------------ steps

    async def pause(self, what: str) -> None:
        if self.interactive:
            await asyncio.to_thread(input, f"press Enter to {what} ")
        else:
            await asyncio.sleep(3.0)

    def _power_on_if_off(self, host: str) -> bool:
        """A host fenced by its BMC stays off after ``heal``: power it on there, as an operator would."""
        from nonstop.lab.cluster import LabCluster

        lab = LabCluster(self.spec, self.record["store"])
        lab.bmc_ports = json.loads((lab.run_dir / "bmc-ports.json").read_text())
        if lab.power_state(host) == "Off":
            lab.power_on(host)
            return True
        return False

    async def chaos(self, path: str, body: dict[str, Any] | None) -> float:
        at = time.time()
        await asyncio.to_thread(self.api.post, path, body)
        return at

    async def host_failure(self, host: str) -> dict[str, Any]:
        await self.pause(f"power off {host}")
        self.say(f"[bold]event: power off {host}[/] (BMC ForceOff)")
        at = await self.chaos("/chaos/fail", {"target": "host", "name": host})
        return await self._lost_host("host-failure", host, at, f"power {host} back on")

    async def _lost_host(self, event: str, host: str, at: float, heal_what: str) -> dict[str, Any]:
        """After a host was lost (killed or partitioned): detection, fence, failover, every replica
        serving; then heal, power the host on if its fence left it off, wait for it and for failback."""
        step: dict[str, Any] = {"event": event, "target": host, "at": at}
        dead = await self.wait_event(("host-dead",), host, at - 1, 20)
        fence = await self.wait_event(("fence",), host, at - 1, 40)
        done = await self.wait_event(("failover-done",), host, at - 1, 120)
        full = await self.wait_full(120)
        step |= self._times(at, dead=dead, fence=fence, failover=done, serving_full=full)
        self.say(self._line(step))
        await self.pause(heal_what)
        healed = await self.chaos("/chaos/heal", None)
        step["healed_at"] = healed
        if await asyncio.to_thread(self._power_on_if_off, host):
            self.say(f"  {host} was left off by its fence: powered on through its BMC")
        back = await self.wait_event(("host-state",), host, healed, 60, lambda e: e.detail("after") == "up")
        step["host_up_s"] = round(back.at - healed, 3) if back else None
        failback = None
        if self.spec.policies.ha.failback.value != "manual":
            failback = await self.wait_event(("failback",), host, healed, 45)
        step["failback_s"] = round(failback.at - healed, 3) if failback else None
        await self.wait_full(60)
        await asyncio.sleep(2)
        step["end"] = time.time()
        fb = f"after {step['failback_s']} s" if step["failback_s"] is not None else \
            f"none (policy {self.spec.policies.ha.failback.value})"
        self.say(f"  healed: {host} up after {step['host_up_s']} s; failback {fb}")
        return step

    async def link_cut(self, host: str, nic: str) -> dict[str, Any]:
        await self.pause(f"cut {host}/{nic}")
        self.say(f"[bold]event: cut the cable {host}/{nic}[/]")
        at = await self.chaos("/chaos/fail", {"target": "link", "name": f"{host}/{nic}"})
        step: dict[str, Any] = {"event": "link-cut", "target": f"{host}/{nic}", "at": at}
        team_moved = await self.wait_team_failover(host, nic, 15)
        degraded = await self.wait_event(("link-degraded", "host-state"), host, at - 1, 5 if team_moved else 20,
                                         lambda e: e.kind == "link-degraded" or e.detail("after") == "link-degraded")
        await asyncio.sleep(3)
        dead = await self.wait_event(("host-dead",), host, at - 1, 0.1)
        step |= self._times(at, detection=degraded, team_failover=team_moved)
        step["failover_triggered"] = dead is not None
        self.say(self._line(step) + ("; no host failover (the other link carries on)" if dead is None else "; HOST FAILOVER"))
        healed = await self.chaos("/chaos/heal", None)
        back = await self.wait_event(("host-state",), host, healed, 20, lambda e: e.detail("after") == "up")
        step["restored_s"] = round(back.at - healed, 3) if back else None
        step["healed_at"] = healed
        await asyncio.sleep(2)
        step["end"] = time.time()
        return step

    async def wait_team_failover(self, host: str, nic: str, timeout: float) -> float | None:
        """Wall time when a team of ``host`` whose member ``nic`` was cut reports another active member
        (the API's team view, from the agent's observed record); None without a team or on timeout."""
        if not any(nic in t.members for t in self.spec.host(host).teams):
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            teams = await asyncio.to_thread(self.api.get, "/teams")
            for team in teams:
                if team.get("host") == host and team.get("active") not in (None, nic):
                    return time.time()
            await asyncio.sleep(0.1)
        return None

    async def partition(self, host: str) -> dict[str, Any]:
        await self.pause(f"partition {host}")
        self.say(f"[bold]event: partition {host}[/] (heartbeats dropped; the host keeps running)")
        at = await self.chaos("/chaos/partition", {"host": host})
        return await self._lost_host("partition", host, at, "heal everything")

    @staticmethod
    def _times(at: float, **found: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in found.items():
            when = value.at if isinstance(value, EventRecord) else value
            out[f"{name}_s"] = round(float(when) - at, 3) if when is not None else None
        return out

    @staticmethod
    def _line(step: dict[str, Any]) -> str:
        parts = [f"{k.removesuffix('_s')} {v:.2f} s" for k, v in step.items() if k.endswith("_s") and v is not None]
        return f"  {step['event']} {step['target']}: " + (", ".join(parts) or "nothing recorded")

    def choose_hosts(self, placement: dict[str, str]) -> tuple[str, str, str]:
        hosts = [h.name for h in self.spec.hosts]
        busy = sorted(hosts, key=lambda h: -sum(1 for g, on in placement.items()
                                                  if on == h and g.startswith(self.group + "-")))
        first = busy[0]
        second = next((h for h in hosts if h != first), first)
        third = next((h for h in reversed(hosts) if h not in (first,)), second)
        return first, second, third

    async def run(self, budget: float) -> tuple[list[Any], list[EventRecord], float]:
        load = LoadRun(self.port, rate=self.rate, duration=budget, max_requests=int(self.rate * budget) + 1,
                       path=self.path)
        self.say(f"load: {self.rate:.0f} requests/s of GET {self.path} through 127.0.0.1:{self.port} "
                 f"(service {self.service})")
        began = time.time()
        task = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(4)
            self.settles.append(await self.steady("before the first fault"))
            fail_host, cut_host, part_host = self.choose_hosts(await self.placement())
            self.steps.append(await self.host_failure(fail_host))
            self.settles.append(await self.steady(f"after {fail_host} came back"))
            teams = self.spec.host(cut_host).teams
            # With a team, cut its active member (the primary) so the team's failover shows.
            nic = (teams[0].primary or teams[0].members[0]) if teams else self.spec.host(cut_host).nics[-1].name
            self.steps.append(await self.link_cut(cut_host, nic))
            self.settles.append(await self.steady(f"after the cable of {cut_host} was restored"))
            self.steps.append(await self.partition(part_host))
            await asyncio.sleep(3)
        finally:
            load.stop()
            samples = await task
        return samples, await self.events(began - 1), began


def run_tour(spec: ClusterSpec, spec_file: Path, *, say: Say, interactive: bool, rate: float | None = None,
             service: str | None = None, path: str | None = None, plot: Path | None = None, keep: bool = False,
             budget: float = 600.0) -> dict[str, Any]:
    """The whole tour; the report (also printed)."""
    from nonstop.demo.report import build_report, print_report, write_plot

    cluster = spec.cluster
    proc = None
    up_seconds = down_seconds = None
    record = runfiles.running(cluster)
    report: dict[str, Any] = {"cluster": cluster, "completed": False}
    try:
        if record is None:
            say(f"starting the lab: nonstop up {spec_file}")
            proc, up_seconds = start_up(spec_file, cluster, say, Path(f"/tmp/nonstop-demo-{cluster}-up.log"))
            record = runfiles.running(cluster)
            if record is None:
                raise TourError("`nonstop up` is serving but left no record")
        else:
            say(f"using the running cluster {cluster} (pid {record['pid']})")
        names = [s.name for s in spec.services if s.backends is not None]
        chosen = service or names[0]
        if rate is None:
            rate = default_rate(spec, chosen)
        path = path or default_path(spec, chosen)
        tour = Tour(spec, record, chosen, say, rate, interactive, path)
        try:
            samples, events, began = asyncio.run(tour.run(budget))
        finally:
            report["settles"] = tour.settles
        report = {**build_report(cluster, chosen, samples, tour.steps, events, began), "settles": tour.settles,
                  "rate": rate, "path": path}
        report["up_seconds"] = round(up_seconds, 2) if up_seconds is not None else None
        report["completed"] = True
    except TourError as exc:
        say(f"[red]tour failed:[/] {exc}")
        report["error"] = str(exc)
    finally:
        if proc is not None and not keep:
            say("stopping the lab (nonstop down)")
            down_seconds = stop_up(proc, cluster)
            say(f"lab removed in {down_seconds:.1f} s")
    report["down_seconds"] = round(down_seconds, 2) if down_seconds is not None else None
    if report.get("completed"):
        if plot is not None:
            write_plot(report, plot)
            report["plot"] = str(plot)
        print_report(report, say)
    return report
