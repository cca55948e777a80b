"""A tiny lab for teams: two hosts and one switch, in namespaces, for tests and the bench.

Role: build (and completely remove) this topology, so team tests and benchmarks do not
depend on the full lab fabric::

    <p>-h1: team0 (198.18.X.1/24) over eth0, eth1 ──┐
                                                    ├─ <p>-sw: bridge br0 ─ h2e0 ── <p>-h2: eth0 (198.18.X.2/24)
            eth0 ── h1e0, eth1 ── h1e1 ─────────────┘     (h1e0/h1e1 on br0, or aggregated as LAG lag0)

plus helpers to cut/restore a cable (the switch-side end goes down, so the host end
loses carrier), to make a link "dead but carrier up" (nft drop on the switch port), to
run a program or open a socket inside a namespace, and to start/stop the team daemon.
Every name carries a random token (``nonstop-tm<token>-...``); ``close`` removes it all.

Must NOT: touch anything outside its own namespaces, or address anything outside
198.18.0.0/15 inside them.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pyroute2 import IPRoute

from nonstop.core.spec import ClusterSpec, HostSpec, TeamSpec
from nonstop.net import netns, nft
from nonstop.net.team import link_info, setup_switch_lag, setup_team


def popen_in(name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` inside namespace ``name``: forked by a thread inside it (no ``preexec_fn``,
    which is unsafe in a process with other threads)."""
    popen: subprocess.Popen[Any] = netns.call(name, subprocess.Popen, argv, **kwargs)
    return popen


class TeamTestbed:
    """One h1 (teamed) — sw — h2 topology; use as a context manager."""

    def __init__(
        self,
        team: TeamSpec,
        *,
        lag: bool = False,
        subnet_octet: int | None = None,
        speeds: dict[str, int] | None = None,
        plain: bool = False,
        guest: bool = False,
    ) -> None:
        self.token = secrets.token_hex(3)
        self.prefix = f"nonstop-tm{self.token}"
        self.h1, self.sw, self.h2, self.g = (f"{self.prefix}-{n}" for n in ("h1", "sw", "h2", "g"))
        self.team = team
        self.lag = lag
        octet = subnet_octet if subnet_octet is not None else 100 + secrets.randbelow(150)
        self.h1_ip = f"198.18.{octet}.1"
        self.h2_ip = f"198.18.{octet}.2"
        self.guest_ip = f"198.18.{octet}.3"
        self.switch_ports = {m: f"h1e{i}" for i, m in enumerate(team.members)}
        self.workdir = Path(f"/tmp/{self.prefix}")
        self.speeds = speeds or {}
        self.plain = plain
        self.guest = guest
        """Bridge ``brg`` in h1 over the team, with a guest namespace behind it (198.18.X.3)."""
        """No team: h1's address goes straight on its first NIC (the baseline path)."""
        self.daemon: subprocess.Popen[Any] | None = None
        self.lag_daemon: subprocess.Popen[Any] | None = None
        self.last_cable_change = 0.0

    # ------------------------------------------------------------------ build

    def __enter__(self) -> TeamTestbed:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for ns in self.namespaces():
            netns.create(ns)
        with IPRoute(netns=self.sw) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            bridge = ipr.link_lookup(ifname="br0")[0]
            ipr.link("set", index=bridge, state="up")
            cables = [(port, self.h1, member) for member, port in self.switch_ports.items()]
            cables.append(("h2e0", self.h2, "eth0"))
            for port, ns, nic in cables:
                ipr.link("add", ifname=port, kind="veth", peer={"ifname": nic, "net_ns_fd": ns})
                index = ipr.link_lookup(ifname=port)[0]
                ipr.link("set", index=index, master=bridge, state="up")
        for ns in (self.h1, self.h2):
            with IPRoute(netns=ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                for nic in ("eth0", *self.team.members) if ns == self.h1 else ("eth0",):
                    found = ipr.link_lookup(ifname=nic)
                    if found:
                        ipr.link("set", index=found[0], state="up")
        with IPRoute(netns=self.h2) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address=self.h2_ip, prefixlen=24)
        if self.lag:
            setup_switch_lag(self.sw, "br0", list(self.switch_ports.values()), "lag0")
        logical = self.team.members[0]
        if not self.plain:
            logical = setup_team(self.h1, self.team, mac="02:6e:73:00:00:01")
        if self.guest:
            logical = self._build_guest(logical)
        with IPRoute(netns=self.h1) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname=logical)[0], address=self.h1_ip, prefixlen=24)
        self.wait_reachable()

    def namespaces(self) -> tuple[str, ...]:
        return (self.h1, self.sw, self.h2, self.g) if self.guest else (self.h1, self.sw, self.h2)

    def _build_guest(self, uplink: str) -> str:
        """h1: bridge brg over the team plus gst0 ── eth0 of the guest namespace.

        The guest has no IPv6, so it sends nothing unless told to (no router solicitations
        or MLD reports that would teach the switch its MAC behind a test's back).
        """
        for scope in ("all", "default"):
            netns.call(self.g, netns.write_sysctl, f"net/ipv6/conf/{scope}/disable_ipv6", "1")
        with IPRoute(netns=self.h1) as ipr:
            ipr.link("add", ifname="brg", kind="bridge")
            bridge = ipr.link_lookup(ifname="brg")[0]
            ipr.link("set", index=bridge, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname=uplink)[0], master=bridge)
            ipr.link("add", ifname="gst0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.g})
            ipr.link("set", index=ipr.link_lookup(ifname="gst0")[0], master=bridge, state="up")
        with IPRoute(netns=self.g) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.link("set", index=index, state="up", address="02:6e:73:00:00:33")
            ipr.addr("add", index=index, address=self.guest_ip, prefixlen=24)
        return "brg"

    def wait_reachable(self, timeout: float = 5.0) -> None:
        """Until a TCP connect from h1 to a closed port on h2 gets refused (ARP resolved)."""
        import socket

        deadline = time.monotonic() + timeout
        while True:
            sock = netns.call(self.h1, socket.socket)
            sock.settimeout(0.5)
            try:
                sock.connect((self.h2_ip, 9))
            except ConnectionRefusedError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
            finally:
                sock.close()

    def close(self) -> None:
        self.stop_daemon()
        for ns in self.namespaces():
            with contextlib.suppress(Exception):
                netns.delete(ns)
        with contextlib.suppress(FileNotFoundError):
            for child in self.workdir.iterdir():
                child.unlink()
            self.workdir.rmdir()

    # ------------------------------------------------------------------ faults

    def _set_switch_port(self, member: str, state: str) -> None:
        with IPRoute(netns=self.sw) as ipr:
            index = ipr.link_lookup(ifname=self.switch_ports[member])[0]
            self.last_cable_change = time.time()  # just before the kernel acts, for delay figures
            ipr.link("set", index=index, state=state)

    def cut(self, member: str) -> None:
        """Cut the cable: the switch-side end goes down, the host NIC loses carrier."""
        self._set_switch_port(member, "down")

    def restore(self, member: str) -> None:
        self._set_switch_port(member, "up")

    def blackhole(self, member: str, on: bool = True) -> None:
        """A dead link with carrier: the switch port silently drops what it receives."""
        table = f"nonstop_tmdead_{member}"
        port = self.switch_ports[member]
        script = f"add table netdev {table}\ndelete table netdev {table}\n"
        if on:
            script += f'table netdev {table} {{\n\tchain c {{\n\t\ttype filter hook ingress device "{port}" priority -10; policy drop;\n\t}}\n}}\n'
        nft.apply(self.sw, script)

    def shape(self, member: str, rate: str, burst: int = 131072) -> None:
        """Limit what h1 sends out of ``member`` with a tbf qdisc (e.g. ``rate="200mbit"``)."""
        with IPRoute(netns=self.h1) as ipr:
            index = ipr.link_lookup(ifname=member)[0]
            ipr.tc("add", "tbf", index=index, rate=rate, burst=burst, latency="20ms")

    def carrier(self, member: str) -> bool:
        with IPRoute(netns=self.h1) as ipr:
            info = link_info(ipr, member)
        return bool(info and info["carrier"])

    def counters(self, ns: str, link: str) -> dict[str, int]:
        with IPRoute(netns=ns) as ipr:
            info = link_info(ipr, link)
        return dict(info["counters"]) if info else {}

    # ------------------------------------------------------------------ daemon

    def spec_file(self) -> Path:
        nics = [{"name": m, "speed": self.speeds.get(m)} for m in self.team.members]
        host = HostSpec(name="h1", cpus=1, memory="1GiB", nics=nics, teams=[self.team])
        spec = ClusterSpec(cluster="tm", switches=["sw0"], hosts=[host])
        path = self.workdir / "cluster.yaml"
        path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        return path

    @property
    def status_file(self) -> Path:
        return self.workdir / "team-status.json"

    @property
    def events_file(self) -> Path:
        return self.workdir / "team-events.jsonl"

    def start_daemon(self, timeout: float = 10.0, *, lag: bool = False) -> None:
        """Start the team daemon for h1 (and, with ``lag``, one for the switch's LAG)."""
        argv = [sys.executable, "-m", "nonstop.net.team_daemon", "--netns", self.h1, "--spec", str(self.spec_file()),
                "--host", "h1", "--status-file", str(self.status_file), "--events-file", str(self.events_file)]
        self.daemon = self._spawn(argv, self.status_file, timeout)
        if lag:
            ports = ",".join(self.switch_ports.values())
            argv = [sys.executable, "-m", "nonstop.net.team_daemon", "--netns", self.sw, "--lag", f"lag0={ports}",
                    "--status-file", str(self.workdir / "lag-status.json"),
                    "--events-file", str(self.workdir / "lag-events.jsonl")]
            self.lag_daemon = self._spawn(argv, self.workdir / "lag-status.json", timeout)

    @staticmethod
    def _spawn(argv: list[str], status: Path, timeout: float) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while not status.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"team daemon did not start: {err}")
            time.sleep(0.02)
        return proc

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.status_file.read_text())["teams"][self.team.name])

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate: Any, timeout: float = 3.0) -> dict[str, Any]:
        """Poll the status file until ``predicate(status)``; return that status."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.status()
                if predicate(status):
                    return status
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                status = {}
            if time.monotonic() > deadline:
                raise TimeoutError(f"team status never matched; last: {status}")
            time.sleep(0.02)

    def stop_daemon(self) -> None:
        for proc in (self.daemon, self.lag_daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc is not None and proc.stderr is not None:
                proc.stderr.close()
        self.daemon = self.lag_daemon = None
