"""The team daemon: link monitoring and failover for every team of one lab host.

Usage::

    python -m nonstop.net.team_daemon --netns NS --spec FILE --host NAME
        [--status-file PATH] [--events-file PATH] [--lag NAME=PORT,PORT ...]

Role: the I/O loop around the pure member-selection machine (``nonstop.core.net.team``).
It joins the host's namespace once, then:

* watches carrier through netlink link events (a separate bound ``IPRoute``), and polls
  carrier every ``miimon`` in case an event is missed;
* with ``arp_targets``, sends an ARP probe (RFC 5227 style: sender IP 0.0.0.0, sender
  MAC = the member's own MAC, so neither the switch nor the target learns anything that
  could steer team traffic) out of every member every ``miimon``; a member that hears no
  reply for ``PROBE_MISSED`` intervals is down even with carrier ("up but dead");
* feeds link observations and the passing time to the machine; when it says so, swaps
  the nft data path in one transaction (in-process libnftables, ``nft.Session``: ~1 ms
  instead of 10-25 ms for forking ``nft``) and, after an active-backup failover, sends a
  gratuitous ARP out of the new active member (plus one frame per MAC learned behind the
  team's bridge, so the switch relearns guests too);
* writes the status JSON (mode, active member, each member's state and counters,
  failover count) atomically on every change and every second, and one JSON line per
  event to stdout or ``--events-file``.

With ``--lag`` (in a lab switch's namespace) it does the same for static switch LAGs
made by ``setup_switch_lag``: ports without carrier leave the hash.

SIGTERM/SIGINT stop it; the data path stays as it was (like a bond without its daemon).
Every second it also re-applies the rules the machine wants (level-driven: an identical
transaction loses no frame, and a rewrite by anyone else is undone).

Must NOT: decide membership itself (the machine does), or create/delete member NICs.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from pyroute2 import IPRoute

from nonstop.core.net.team import TeamConfig, TeamDecision, initial_state, observe_link, tick, transmit_members
from nonstop.core.net.team_render import peer_name, render_ruleset
from nonstop.core.spec import ClusterSpec, TeamSpec
from nonstop.net import netns, nft
from nonstop.net.team import data_path_for, lag_config, link_info, probe_macs, setup_team
from nonstop.net.team_frames import (
    Announcer,
    ArpProbe,
    LinkPoller,
    LinkWatcher,
    MemberSocket,
    parse_probe_reply,
)

PROBE_MISSED = 3
STATUS_REFRESH = 1.0


def load_cluster(path: str) -> ClusterSpec:
    try:
        from nonstop.specfile import load_spec
    except ImportError:  # the loader is someone else's module; plain pydantic will do
        import yaml

        with open(path) as handle:
            return ClusterSpec.model_validate(yaml.safe_load(handle))
    return load_spec(path)


class MonitoredTeam:
    """One team (or LAG) under watch: its config, machine state and probe sockets."""

    def __init__(self, kind: str, config: TeamConfig, interval: float, targets: list[str]) -> None:
        self.kind = kind
        self.config = config
        self.interval = max(interval, 0.01)
        self.targets = targets
        self.port = peer_name(config.name)
        self.carrier: dict[str, bool] = {}
        self.last_reply: dict[str, float] = {}
        self.link_ok: dict[str, bool] = {}
        self.own_macs: dict[str, str] = {}
        self.sockets: dict[str, Any] = {}
        self.state: Any = None
        self.announcer: Announcer | None = None
        self.dirty = False
        self.logical_carrier: bool | None = None
        """The last rules swap failed; retry on the next poll."""
        self.last_failover: dict[str, Any] | None = None

    def probe_ok(self, member: str, now: float) -> bool:
        if not self.targets or member not in self.sockets or member not in self.own_macs:
            return True
        return now - self.last_reply.get(member, 0.0) <= PROBE_MISSED * self.interval


class TeamDaemon:
    def __init__(self, teams: list[MonitoredTeam], status_file: Path | None, events: TextIO, meta: dict[str, Any]) -> None:
        self.teams = teams
        self.status_file = status_file
        self.events = events
        self.meta = meta
        self.ipr = IPRoute()
        self.watch = LinkWatcher()
        self.poller = LinkPoller()
        self.nft = nft.Session()
        self.running = True
        self.next_status = 0.0

    # ------------------------------------------------------------------ setup

    def start(self) -> None:
        now = time.monotonic()
        for team in self.teams:
            infos = {m: link_info(self.ipr, m) for m in team.config.members}
            team_mac = (link_info(self.ipr, team.config.name) or {}).get("mac") if team.kind == "team" else None
            team.own_macs = probe_macs({m: i for m, i in infos.items() if i}, team_mac) if team.kind == "team" else {}
            for member, info in infos.items():
                team.carrier[member] = bool(info and info["carrier"])
                team.last_reply[member] = now  # grace: one probe window before a silent link counts
                if team.targets and info is not None:
                    team.sockets[member] = MemberSocket(member)
            team.link_ok = {m: team.carrier[m] for m in team.config.members}
            if team.kind == "team":
                team.announcer = Announcer(team.config.name, team.config.members)
                team.announcer.refresh(self.ipr)
            decision = initial_state(team.config, team.link_ok, now)
            self.apply(team, decision, now, force=True)

    # -------------------------------------------------------------- decisions

    def apply(self, team: MonitoredTeam, decision: TeamDecision, detected: float, force: bool = False) -> None:
        before = team.state
        team.state = decision.state
        if decision.rewrite or force or team.dirty:
            retry, team.dirty = team.dirty, False
            path = data_path_for(team.kind, team.config, decision.state, team.port, team.own_macs)
            try:
                self.nft.apply(render_ruleset(path))
            except nft.NftError as exc:
                # A member NIC vanished under us (fabric teardown, a deleted veth): report and
                # keep watching; the next change or poll tries again.
                team.dirty = True
                if not retry:
                    self.emit({"kind": "error", "team": team.config.name, "error": str(exc).splitlines()[0],
                               "at": time.time()})
        applied = time.monotonic()
        if decision.announce_on and team.announcer is not None and before is not None:
            team.announcer.send(decision.announce_on)
        announced = time.monotonic()
        self.sync_logical_carrier(team)
        for event in decision.events:
            record = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(event).items()}
            record["monotonic"] = record.pop("at")  # the machine's clock: exact delay arithmetic
            record["at"] = time.time()
            if record["kind"] == "active-changed":
                record["apply_ms"] = round((applied - detected) * 1000, 3)
                record["announce_ms"] = round((announced - detected) * 1000, 3)
                team.last_failover = dict(record)
            self.emit(record)
        if decision.events or force:
            self.write_status()

    def sync_logical_carrier(self, team: MonitoredTeam) -> None:
        """Like a bond, the team has carrier only while some member can carry traffic.

        Downing the hidden peer ``team0p`` takes carrier off ``team0``, so routes, bridges
        and anything watching the team see it fail instead of black-holing into it.
        """
        if team.kind != "team":
            return
        wanted = bool(transmit_members(team.config, team.state))
        if wanted == team.logical_carrier:
            return
        found = self.ipr.link_lookup(ifname=team.port)
        if not found:
            return
        self.ipr.link("set", index=found[0], state="up" if wanted else "down")
        team.logical_carrier = wanted
        self.emit({"kind": "carrier", "team": team.config.name, "up": wanted, "at": time.time()})

    def emit(self, record: dict[str, Any]) -> None:
        self.events.write(json.dumps(record, default=list) + "\n")
        self.events.flush()

    def observe(self, team: MonitoredTeam, member: str, now: float) -> None:
        ok = team.carrier.get(member, False) and team.probe_ok(member, now)
        if ok != team.link_ok.get(member):
            team.link_ok[member] = ok
            self.emit({"kind": "link", "team": team.config.name, "member": member, "ok": ok,
                       "carrier": team.carrier.get(member, False), "at": time.time()})
            self.apply(team, observe_link(team.config, team.state, member, ok, now), now)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        teams = {}
        for team in self.teams:
            members = {}
            for member in team.config.members:
                status = team.state.member(member)
                info = link_info(self.ipr, member)
                members[member] = {
                    "state": status.state.value,
                    "carrier": team.carrier.get(member, False),
                    "probe_ok": team.probe_ok(member, time.monotonic()) if team.targets else None,
                    "counters": info["counters"] if info else {},
                }
            teams[team.config.name] = {
                "kind": team.kind,
                "mode": team.config.mode.value,
                "active": team.state.active,
                "transmit": list(transmit_members(team.config, team.state)),
                "failovers": team.state.failovers,
                "last_failover": team.last_failover,
                "members": members,
            }
        return {**self.meta, "pid": os.getpid(), "updated_at": time.time(), "teams": teams}

    def write_status(self) -> None:
        self.next_status = time.monotonic() + STATUS_REFRESH
        for team in self.teams:
            if team.announcer is not None:
                team.announcer.refresh(self.ipr)  # addresses and guests change; keep frames fresh
        if self.status_file is None:
            return
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        tmp.write_text(json.dumps(self.status(), indent=1))
        os.replace(tmp, self.status_file)

    # -------------------------------------------------------------------- loop

    def on_link_events(self, now: float) -> None:
        for event in self.watch.read():
            for team in self.teams:
                if event.name in team.carrier and team.carrier[event.name] != event.carrier:
                    team.carrier[event.name] = event.carrier
                    self.observe(team, event.name, now)

    def poll(self, team: MonitoredTeam, now: float) -> None:
        """The miimon pass: re-read carrier, send probes, judge probe silence, run delays."""
        carriers = self.poller.carriers()
        for member in team.config.members:
            team.carrier[member] = carriers.get(member, False)
            sock = team.sockets.get(member)
            if sock is not None and team.own_macs.get(member):
                for target in team.targets:
                    ArpProbe(team.own_macs[member], target).send(sock)
            self.observe(team, member, now)
        self.apply(team, tick(team.config, team.state, now), now, force=team.dirty)

    def run(self) -> None:
        self.start()
        next_poll = {id(t): time.monotonic() + t.interval for t in self.teams}
        while self.running:
            now = time.monotonic()
            deadlines = [self.next_status, *next_poll.values()]
            deadlines += [d for t in self.teams if (d := t.state.next_deadline()) is not None]
            timeout = max(0.0, min(deadlines) - now)
            sockets = {s.fileno(): (t, m) for t in self.teams for m, s in t.sockets.items()}
            try:
                readable, _, _ = select.select([self.watch.fileno(), *sockets], [], [], timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for fd in readable:
                if fd == self.watch.fileno():
                    self.on_link_events(now)
                else:
                    team, member = sockets[fd]
                    frame = team.sockets[member].recv(2048)
                    if parse_probe_reply(frame, team.targets, team.own_macs.get(member)):
                        team.last_reply[member] = now
                        self.observe(team, member, now)
            for team in self.teams:
                if now >= next_poll[id(team)]:
                    next_poll[id(team)] = now + team.interval
                    self.poll(team, now)
                elif (d := team.state.next_deadline()) is not None and d <= now:
                    self.apply(team, tick(team.config, team.state, now), now)
            if now >= self.next_status:
                for team in self.teams:
                    # Level-driven: re-assert the rules the machine wants (an identical
                    # transaction loses no frame), undoing anyone else's rewrite.
                    self.apply(team, TeamDecision(state=team.state, events=(), rewrite=True), now)
                self.write_status()

    def stop(self, *_: object) -> None:
        self.running = False


def _parse_lag(text: str) -> tuple[str, list[str]]:
    name, _, ports = text.partition("=")
    if not name or not ports:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT,PORT, got {text!r}")
    return name, ports.split(",")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nonstop.net.team_daemon", description=__doc__.split("\n\n")[0])
    parser.add_argument("--netns", required=True, help="the host's network namespace")
    parser.add_argument("--spec", help="cluster spec file (YAML)")
    parser.add_argument("--host", help="the host whose teams to monitor")
    parser.add_argument("--status-file", type=Path)
    parser.add_argument("--events-file", type=Path, help="JSON lines; default stdout")
    parser.add_argument("--lag", action="append", type=_parse_lag, default=[], help="switch LAG NAME=PORT,PORT")
    parser.add_argument("--lag-interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    teams: list[MonitoredTeam] = []
    if args.spec or args.host:
        if not (args.spec and args.host):
            parser.error("--spec and --host go together")
        spec = load_cluster(args.spec)
        host = spec.host(args.host)
        speeds = {nic.name: nic.speed for nic in host.nics}
        for team_spec in host.teams:
            _ensure_team(args.netns, team_spec)
            config = TeamConfig.from_spec(team_spec, speeds)
            teams.append(MonitoredTeam("team", config, team_spec.miimon, list(team_spec.arp_targets)))
    for name, ports in args.lag:
        teams.append(MonitoredTeam("lag", lag_config(name, ports), args.lag_interval, []))
    if not teams:
        parser.error("nothing to monitor: give --spec/--host (with teams) or --lag")
    netns.enter(args.netns)  # the only thread so far: the whole daemon lives in the namespace
    events: TextIO = open(args.events_file, "a", buffering=1) if args.events_file else sys.stdout  # noqa: SIM115
    daemon = TeamDaemon(teams, args.status_file, events, {"host": args.host, "netns": args.netns})
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGINT, daemon.stop)
    daemon.run()
    return 0


def _ensure_team(ns: str, team: TeamSpec) -> None:
    """Create the team first if the fabric has not (setup is idempotent and cheap)."""
    with netns.iproute(ns) as ipr:
        if ipr.link_lookup(ifname=team.name) and ipr.link_lookup(ifname=peer_name(team.name)):
            return
    setup_team(ns, team)


if __name__ == "__main__":
    sys.exit(main())
