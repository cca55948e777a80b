"""The dashboard in a real browser (Debian's chromium driven by Playwright) against the real API
server (uvicorn on 127.0.0.1) over a seeded store: hosts and guests show, "Fail host" (served by
the in-process StoreLab, which changes the store as the controller's failover would) turns the host
failed and its guests reappear on the other hosts — through the SSE stream, with no reload. A
maintenance request is answered by the controller stand-in (the real ``decide``). Each
host's hardware component groups and its NICs and team (active member, failover) show too.
A screenshot goes to test-artifacts/dashboard-failover.png."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from nonstop.api.app import create_app

from .seeding import CLUSTER, ROOT, ControllerStandIn, RunningServer, StoreLab, tokens

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                                reason="Debian chromium not installed (apt-get install chromium)")


@pytest.fixture
def browser(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
            viewport={"width": 1500, "height": 1000})
        try:
            yield context
        finally:
            context.close()


def test_dashboard_shows_failover_live(store_url: str, token_file: Path, controller: ControllerStandIn,
                                      browser) -> None:
    lab = StoreLab(store_url)
    with RunningServer(create_app(store_url, CLUSTER, token_file, lab=lab)) as server:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{server.url}/#token={tokens(token_file)['admin']}")
        page.wait_for_selector('.host[data-host="host3"]', timeout=10_000)
        page.wait_for_selector("#live.on", timeout=10_000)
        assert page.locator(".host").count() == 3
        before = {h: page.locator(f'.host[data-host="{h}"] .guest').evaluate_all("els => els.map(e => e.dataset.guest)")
                  for h in ("host1", "host2", "host3")}
        assert sorted(g for gs in before.values() for g in gs) == sorted(
            ["web-0", "web-1", "web-2", "api-0", "api-1", "api-2"])
        # A change made elsewhere (another client's API call → store → watch → SSE → refetch) shows within 1 s.
        other = next(h for h in ("host1", "host2", "host3") if h != max(before, key=lambda h: len(before[h])))
        import httpx

        t0 = time.monotonic()
        r = httpx.post(f"{server.url}/api/v1/hosts/{other}/maintenance", json={"action": "enter"},
                       headers={"Authorization": f"Bearer {tokens(token_file)['admin']}"})
        assert r.status_code == 200
        page.wait_for_selector(f'.host[data-host="{other}"][data-state="maintenance"]', timeout=5_000)
        assert time.monotonic() - t0 < 1.0
        httpx.post(f"{server.url}/api/v1/hosts/{other}/maintenance", json={"action": "exit"},
                   headers={"Authorization": f"Bearer {tokens(token_file)['admin']}"})
        page.wait_for_selector(f'.host[data-host="{other}"][data-state="up"]', timeout=5_000)
        # Hardware health per host (the hardware watcher's record): each component group and its state.
        assert page.locator('.host[data-host="host3"] .hw').get_attribute("data-health") == "degraded"
        assert page.locator('.host[data-host="host3"] .hw [data-group="power"]').get_attribute("data-state") == "degraded"
        for host in ("host1", "host2", "host3"):
            for group in ("network", "storage"):
                assert page.locator(f'.host[data-host="{host}"] .hw [data-group="{group}"][data-state="redundant"]').count() == 1
        # NICs and team state (the agent's report of its team daemon); a team failover shows without a reload.
        assert page.locator('.host[data-host="host2"] .team[data-team="team0"]').get_attribute("data-active") == "eth0"
        t0 = time.monotonic()
        report_team_failover(store_url, "host2")
        page.wait_for_selector('.host[data-host="host2"] .team[data-team="team0"][data-active="eth1"][data-state="degraded"]',
                               timeout=5_000)
        page.wait_for_selector('.host[data-host="host2"] .nic[data-nic="eth0"][data-state="down"]', timeout=2_000)
        assert time.monotonic() - t0 < 1.5
        victim = max(before, key=lambda h: len(before[h]))
        assert before[victim]
        assert page.locator(f'.host[data-host="{victim}"]').get_attribute("data-state") == "up"

        started = time.monotonic()
        page.click(f'.host[data-host="{victim}"] [data-action="fail-host"]')
        page.wait_for_selector(f'.host[data-host="{victim}"][data-state="failed"]', timeout=10_000)
        for guest in before[victim]:
            page.wait_for_selector(f'.host:not([data-host="{victim}"]) .guest[data-guest="{guest}"][data-state="running"]',
                                   timeout=10_000)
        took = time.monotonic() - started
        assert page.locator(f'.host[data-host="{victim}"] .guest').count() == 0
        assert lab.calls == [("fail_host", (victim,))]
        page.wait_for_selector('#events li[data-kind="guest-moved"]', timeout=5_000)
        # within a second of the store change (the lab waits 0.3 s before "detecting")
        assert took < 0.3 + 1.0 + 1.5, took
        page.wait_for_timeout(400)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-failover.png"), full_page=True)
        page.click('.guest[data-guest="web-0"]')
        page.wait_for_selector("#detail:not(.hidden) table.expl", timeout=5_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-describe.png"))
        assert not errors, errors


def report_team_failover(store_url: str, host: str) -> None:
    """What host's agent writes when its team daemon moved team0 from eth0 (cable cut) to eth1."""
    import asyncio

    from nonstop.agent.team_report import merge_observed, team_view
    from nonstop.store import open_store

    status = {"updated_at": time.time(), "teams": {"team0": {
        "kind": "team", "mode": "active-backup", "active": "eth1", "transmit": ["eth1"], "failovers": 1,
        "members": {"eth0": {"state": "down", "carrier": False}, "eth1": {"state": "up", "carrier": True}}}}}

    async def go() -> None:
        store = open_store(store_url)
        try:
            assert await merge_observed(store, CLUSTER, host, team_view(status, time.time()))
        finally:
            await store.close()

    # Playwright's sync API holds an event loop in this thread: write from another one.
    import threading

    thread = threading.Thread(target=asyncio.run, args=(go(),))
    thread.start()
    thread.join(10)


def test_viewer_sees_no_admin_buttons(store_url: str, token_file: Path, browser) -> None:
    with RunningServer(create_app(store_url, CLUSTER, token_file)) as server:
        page = browser.new_page()
        page.goto(f"{server.url}/#token={tokens(token_file)['viewer']}")
        page.wait_for_selector('.host[data-host="host1"]', timeout=10_000)
        assert page.locator("body.viewer").count() == 1
        assert not page.locator('[data-action="fail-host"]').first.is_visible()
        page.goto(f"{server.url}/?again=1#token=wrong")
        page.wait_for_selector("#login:not(.hidden)", timeout=5_000)
