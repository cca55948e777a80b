"""A throw-away two-host network for the QEMU driver's tests and benchmark (not used by the product).

Role: build, with pyroute2 only, namespaces ``nonstop-vm<token>{a,b,c}``: host A and host B
each with a Linux bridge (the host's virtual switch for guests, also carrying the migration
traffic) joined by a veth "cable", and a client namespace cabled into A's bridge. Everything
carries the random token and is removed by ``close()``. Also: an HTTP client that runs in a
namespace (on a thread inside it, through ``nonstop.net.netns``) and parses the built-in
guest's page.

Must not: touch anything outside its own namespaces, or route to the machine's interfaces.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from nonstop.net import netns

SUBNET = "198.18.10"


@dataclass
class TwoHostLab:
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)

    @property
    def ns_a(self) -> str:
        return f"nonstop-vm{self.token}a"

    @property
    def ns_b(self) -> str:
        return f"nonstop-vm{self.token}b"

    @property
    def ns_client(self) -> str:
        return f"nonstop-vm{self.token}c"

    host_a_ip = f"{SUBNET}.1"
    host_b_ip = f"{SUBNET}.2"
    client_ip = f"{SUBNET}.3"
    bridge = "br0"

    def build(self) -> TwoHostLab:
        for ns in (self.ns_a, self.ns_b, self.ns_client):
            netns.create(ns)
            self.created.append(ns)
        for n, (ns, ip) in enumerate(((self.ns_a, self.host_a_ip), (self.ns_b, self.host_b_ip))):
            with IPRoute(netns=ns) as ipr:
                # A fixed MAC: a bridge without one takes its lowest port MAC, so plugging in a tap
                # would change the host address's MAC under its neighbours' ARP caches.
                ipr.link("add", ifname=self.bridge, kind="bridge", br_forward_delay=0, br_stp_state=0,
                         address=f"02:00:5e:{int(self.token[:2], 16):02x}:0a:{n + 1:02x}")
                br = ipr.link_lookup(ifname=self.bridge)[0]
                ipr.addr("add", index=br, address=ip, prefixlen=24)
                ipr.link("set", index=br, state="up")
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        # The cable A<->B, then the client's cable into A's bridge.
        self._cable(self.ns_a, "cab", self.ns_b, "cab", bridge_both=True)
        self._cable(self.ns_a, "cli", self.ns_client, "eth0", bridge_both=False)
        with IPRoute(netns=self.ns_client) as ipr:
            eth = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth, address=self.client_ip, prefixlen=24)
            ipr.link("set", index=eth, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return self

    def _cable(self, ns1: str, if1: str, ns2: str, if2: str, *, bridge_both: bool) -> None:
        tmp = f"t{self.token}{if2}"[:15]
        with IPRoute(netns=ns1) as ipr:
            ipr.link("add", ifname=if1, kind="veth", peer={"ifname": tmp, "net_ns_fd": ns2})
            idx = ipr.link_lookup(ifname=if1)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        with IPRoute(netns=ns2) as ipr:
            idx = ipr.link_lookup(ifname=tmp)[0]
            ipr.link("set", index=idx, ifname=if2)
            if bridge_both:
                ipr.link("set", index=idx, master=ipr.link_lookup(ifname=self.bridge)[0])
            ipr.link("set", index=idx, state="up")

    def close(self) -> None:
        # Retried: under heavy load a removal has been seen to fail once and leave the namespace.
        for ns in reversed(self.created):
            for _ in range(3):
                with contextlib.suppress(Exception):
                    netns.delete(ns)
                if not netns.exists(ns):
                    break
                time.sleep(0.2)
        self.created.clear()


PAGE_FIELD = re.compile(r"^(\w+)=(\S*)$", re.M)


def parse_page(body: str) -> dict[str, str]:
    return dict(PAGE_FIELD.findall(body))


def _get(address: str, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, 80, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def fetch_in(ns: str, address: str, path: str = "/", timeout: float = 3.0) -> tuple[int, str]:
    """One HTTP GET from inside namespace ``ns`` (on a helper thread)."""
    return netns.call(ns, _get, address, path, timeout)


def transfer_in(ns: str, address: str, path: str, body: bytes | None = None, *, skip: int = 0,
                timeout: float = 60.0) -> tuple[int, int, float]:
    """One bulk HTTP exchange from inside ``ns``: GET (``body`` None; the guest sends) or POST
    ``body`` (the guest receives). Returns (status, response bytes, seconds); with ``skip``, the
    bytes and seconds count from when the first ``skip`` response bytes had arrived (a sustained
    rate, past any token bucket's initial allowance)."""

    def exchange() -> tuple[int, int, float]:
        conn = http.client.HTTPConnection(address, 80, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request("GET" if body is None else "POST", path, body=body)
            response = conn.getresponse()
            size, timed_from = 0, 0
            while chunk := response.read(65536):
                size += len(chunk)
                if skip and not timed_from and size >= skip:
                    started, timed_from = time.monotonic(), size  # the timed part begins here
            return response.status, size - timed_from, time.monotonic() - started
        finally:
            conn.close()

    return netns.call(ns, exchange)


def wait_http(ns: str, address: str, timeout: float, path: str = "/health") -> float:
    """Poll until the guest answers 200; returns the seconds it took."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(OSError):
            if fetch_in(ns, address, path, timeout=0.5)[0] == 200:
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{address}{path} did not answer 200 within {timeout} s")
        time.sleep(0.02)


@dataclass
class PagePoller:
    """Fetch the guest's page every ``interval`` seconds from a namespace until stopped."""

    ns: str
    address: str
    interval: float = 0.02
    timeout: float = 3.0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    boot_ids: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    slowest: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PagePoller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        netns.enter(self.ns)  # this thread polls from the namespace until stopped
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                status, body = _get(self.address, "/", self.timeout)
                if status != 200:
                    self.failures.append(f"HTTP {status}")
                else:
                    page = parse_page(body)
                    if page.get("boot_id") and (not self.boot_ids or self.boot_ids[-1] != page["boot_id"]):
                        self.boot_ids.append(page["boot_id"])
                    if page.get("host") and (not self.hosts or self.hosts[-1] != page["host"]):
                        self.hosts.append(page["host"])
                    self.ok += 1
            except OSError as exc:
                self.failures.append(repr(exc))
            took = time.monotonic() - began
            self.slowest = max(self.slowest, took)
            self._stop.wait(max(0.0, self.interval - took))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def run_dirs(base: Path, token: str) -> tuple[Path, Path, Path]:
    """State dirs for hosts A and B and the shared disk dir, all under ``base``."""
    root = base / f"nonstop-vm{token}"
    return root / "a" / "guests", root / "b" / "guests", root / "disks"
