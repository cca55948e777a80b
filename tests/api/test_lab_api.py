"""The API and dashboard beside a REAL lab cluster (root): LabCluster brings up the fabric, BMCs,
store, controller, balancer and agents with process guests; the API gets it as ``lab=``. In a
browser, "Fail host" powers the host off through its BMC; the controller detects, fences and fails
over; the dashboard shows the host failed and its guests running on the others. Before that, every
host card shows its hardware component groups (the lab's hardware watcher) and a click
on another host's NIC cuts that cable: link-degraded, NIC shown down. Then the API heals the lab
(cables restored, the host powered on again)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from nonstop.api.app import create_app
from nonstop.core.spec import ClusterSpec

from .seeding import ROOT, RunningServer, tokens

pytestmark = [pytest.mark.root, pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables, cgroups)")]
CHROMIUM = "/usr/bin/chromium"


def small_spec() -> ClusterSpec:
    return ClusterSpec.model_validate({
        "cluster": "a" + secrets.token_hex(2),
        "switches": ["sw0", "sw1"],
        "hosts": [{"name": f"h{i}", "cpus": 2, "memory": "2GiB", "disk": "20GiB",
                   "nics": [{"name": "eth0", "switch": "sw0"}, {"name": "eth1", "switch": "sw1"}]} for i in (1, 2, 3)],
        "networks": [{"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1",
                      "uplink": "eth0"}],
        "guests": [{"name": "api", "kind": "process", "replicas": 3, "vcpus": 1, "memory": "64MiB",
                    "nics": [{"network": "prod"}], "port": 8080, "spread": "soft"}],
        "services": [{"name": "api", "listen": "127.0.0.1:0", "backends": {"group": "api", "port": 8080},
                      "health": {"type": "http", "path": "/health", "interval": "500ms", "timeout": "300ms",
                                 "rise": 1, "fall": 2}}],
        "policies": {"ha": {"host_failures_to_tolerate": 1, "heartbeat_interval": "100ms", "self_fence_timeout": 3.0,
                            "failback": "manual"}},
    })


@pytest.fixture(scope="module")
def lab_api() -> Iterator[tuple[object, RunningServer, dict[str, str]]]:
    from nonstop.lab.cluster import LabCluster

    with tempfile.TemporaryDirectory(prefix="nonstop-api-lab-") as tmp:
        lab = LabCluster(small_spec(), f"sqlite:///{tmp}/state.db")
        try:
            lab.start(lambda _text: None)
            token_file = Path(tmp) / "tokens.json"
            with RunningServer(create_app(lab.store_url, lab.cluster, token_file, lab=lab)) as server:
                yield lab, server, tokens(token_file)
        finally:
            lab.stop()


def get(server: RunningServer, token: str, path: str) -> object:
    req = urllib.request.Request(f"{server.url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the test's own server
        return json.loads(resp.read())


def wait(what: str, check, timeout: float) -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {value!r}"
        time.sleep(0.2)


@pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None, reason="no Debian chromium")
def test_dashboard_fail_host_on_a_real_lab(lab_api, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    lab, server, toks = lab_api
    admin = toks["admin"]
    wait("3 guests running", lambda: sum(g["state"] == "running" for g in get(server, admin, "/guests")) == 3, 40)
    wait("every host up (controller verdict)", lambda: all(h["state"] == "up" for h in get(server, admin, "/hosts")), 20)
    last: list[object] = []

    def healthy_services() -> list[dict]:  # type: ignore[type-arg]
        found = get(server, admin, "/services")
        last[:] = [found]
        return [s for s in found if s["backends"] and all(b["health"] == "up" for b in s["backends"])]

    try:
        services = wait("balancer reports backend health", healthy_services, 40)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last /services: {last}") from None
    assert services[0]["balancer"], services
    listen = services[0]["listen"]
    req = urllib.request.Request(f"{server.url}/api/v1/events/stream?limit=100",
                                 headers={"Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=10) as stream:  # noqa: S310 - the test's own server
        for _ in range(30):  # a little traffic through the balancer: counters and rates reach the API
            with urllib.request.urlopen(f"http://{listen}/", timeout=5) as resp:  # noqa: S310 - the lab's forwarder
                resp.read()
        # the balancers' counters are not in the store: the stream says "stats" so dashboards refetch
        assert any(line.startswith(b"event: stats") for line in stream), "no stats message on the stream"
    wait("request counters from the balancer", lambda: sum(
        b["requests"] for s in get(server, admin, "/services") for b in s["backends"]) >= 30, 10)
    req = urllib.request.Request(f"{server.url}/api/v1/guests/api-0/console",
                                 headers={"Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the test's own server
        assert resp.status == 200 and resp.headers.get_content_type() == "text/plain"
    hosts = get(server, admin, "/hosts")
    victim = max(hosts, key=lambda h: len(h["guests"]))
    moved = list(victim["guests"])
    assert moved

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"], viewport={"width": 1500, "height": 1000})
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(f"{server.url}/#token={admin}")
            page.wait_for_selector(f'.host[data-host="{victim["name"]}"][data-state="up"]', timeout=10_000)
            # The lab's hardware watcher reads every BMC: each host card shows its component groups.
            for h in hosts:
                for group in ("power", "network", "storage"):
                    page.wait_for_selector(f'.host[data-host="{h["name"]}"] .hw [data-group="{group}"][data-state="redundant"]',
                                           timeout=15_000)
            # Cut one cable of another host: the controller hears it on the other link only →
            # link-degraded (never a failover), and the NIC shows down from that evidence.
            other = next(h["name"] for h in hosts if h["name"] != victim["name"])
            page.click(f'.nic[data-link="{other}/eth1"]')
            page.wait_for_selector(f'.host[data-host="{other}"][data-state="link-degraded"]', timeout=15_000)
            page.wait_for_selector(f'.nic.down[data-link="{other}/eth1"]', timeout=5_000)
            page.click(f'.host[data-host="{victim["name"]}"] [data-action="fail-host"]')
            page.wait_for_selector(f'.host[data-host="{victim["name"]}"][data-state="failed"]', timeout=30_000)
            for guest in moved:
                page.wait_for_selector(
                    f'.host:not([data-host="{victim["name"]}"]) .guest[data-guest="{guest}"][data-state="running"]',
                    timeout=30_000)
            page.wait_for_selector('#events li[data-kind="failover-done"]', timeout=30_000)
            (ROOT / "test-artifacts").mkdir(exist_ok=True)
            page.screenshot(path=str(ROOT / "test-artifacts" / "dashboard-real-lab-failover.png"), full_page=True)
        finally:
            browser.close()
    metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()  # noqa: S310
    assert "nonstop_failover_duration_seconds_count 1.0" in metrics
    accepted = [line for line in metrics.splitlines()
                if line.startswith('nonstop_controller_heartbeats_total{verdict="accepted"}')]
    assert accepted and float(accepted[0].split()[-1]) > 0, metrics[-2000:]
    req = urllib.request.Request(f"{server.url}/api/v1/chaos/heal", method="POST", data=b"{}",
                                 headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    healed = json.loads(urllib.request.urlopen(req, timeout=60).read())  # noqa: S310
    assert f"power on {victim['name']}" in healed["result"]["done"], healed
    assert f"heal {other}" in healed["result"]["done"], healed
    wait(f"{victim['name']} up again", lambda: next(h for h in get(server, admin, "/hosts")
                                                    if h["name"] == victim["name"])["state"] == "up", 40)
