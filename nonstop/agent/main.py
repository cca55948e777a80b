"""Running an agent process: arguments, drivers, store, signals.

Role: build the drivers this host offers (``process`` and, when asked for and importable,
``qemu``), open the store, optionally enter the host's network namespace first (in the lab the
agent of host ``h1`` lives in h1's namespace), run ``Agent.run`` until SIGTERM/SIGINT, and exit
without touching the guests. ``python -m nonstop.agent`` and ``nonstop agent`` both land here.

Must not: hold reconcile logic (agent.py) or driver logic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from nonstop.agent.agent import Agent
from nonstop.core.guests.reconcile import RetryPolicy
from nonstop.drivers import KIND_TO_DRIVER, driver_class
from nonstop.drivers.base import Driver
from nonstop.vital import vital

log = logging.getLogger("nonstop.agent")
DEFAULT_STATE_DIR = Path("/var/lib/nonstop/agent")


def build_drivers(cluster: str, host: str, state_dir: Path, names: list[str], options: dict[str, Any]) -> dict[str, Driver]:
    """Guest kind → driver instance, for each driver name in ``names`` (``process``, ``qemu``, ``fake``)."""
    by_kind: dict[str, Driver] = {}
    kinds = {driver: kind for kind, driver in KIND_TO_DRIVER.items()}
    for name in names:
        try:
            cls = driver_class(name)
        except (KeyError, ImportError) as exc:
            log.warning("driver %s unavailable: %s", name, exc)
            continue
        kind = kinds.get(name, "process")
        by_kind[kind] = cls(cluster=cluster, host=host, state_dir=state_dir / name, **options)
    return by_kind


async def run_agent(
    *, store_url: str, cluster: str, host: str, state_dir: Path, drivers: list[str], interval: float = 1.0,
    lease_ttl: int = 10, options: dict[str, Any] | None = None, stop: asyncio.Event | None = None,
    ha_key: Path | None = None, team_status: Path | None = None,
) -> None:
    from nonstop.store import open_store

    store = open_store(store_url)
    built = build_drivers(cluster, host, state_dir, drivers, options or {})
    if not built:
        raise SystemExit("no usable driver")
    gate = None
    if ha_key is not None:  # heartbeats + self-fencing (nonstop/agent/selffence.py, issue 6)
        from nonstop.agent.selffence import FenceGate, run_agent_ha

        gate = FenceGate()
        built = gate.wrap(built)
    agent = Agent(store, cluster=cluster, host=host, drivers=built, interval=interval, lease_ttl=lease_ttl,
                  policy=RetryPolicy())
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    main_pid = os.getpid()

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s: stopping the agent (guests keep running)", sig.name)
        stop.set()

    def handler(signum: int, _frame: object) -> None:
        # Not loop.add_signal_handler: its wakeup fd is shared with children forked by libraries
        # (pyroute2 forks netns helpers and SIGTERMs them), whose signals would then stop *us*.
        if os.getpid() == main_pid:
            loop.call_soon_threadsafe(on_signal, signal.Signals(signum))

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    log.info("agent for host %s of cluster %s: drivers %s, store %s", host, cluster, sorted(built), store_url)
    ha_task = None
    if gate is not None and ha_key is not None:
        # Heartbeats and self-fencing: if they stop, the host is fenced or unsafe — end the process instead.
        ha_task = vital(run_agent_ha(agent, store, gate, key_path=ha_key, drivers=built), "agent-ha")
    from nonstop.agent.patch import run_patch_service  # issue 8: patch/self-test requests (docs/patching.md)

    patch_task = asyncio.create_task(run_patch_service(store, cluster, host, state_dir, stop, options))
    from nonstop.components.mirror_host import run_mirror_reconciler  # issue 9: mirrored VM disks

    mirror_task = asyncio.create_task(run_mirror_reconciler(store, cluster, host, state_dir, options or {}, stop,
                                                            drivers=built))
    team_task = None
    if team_status is not None:  # issue 7: the team daemon's view (active member, links) into hosts/<h>/observed
        from nonstop.agent.team_report import run_team_report

        team_task = asyncio.create_task(run_team_report(store, cluster, host, team_status, stop))
    try:
        await agent.run(stop)
    finally:
        patch_task.cancel()
        mirror_task.cancel()
        if team_task is not None:
            team_task.cancel()
        if ha_task is not None:
            ha_task.cancel()
        await store.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nonstop agent", description="keep this host's guests as the store says")
    p.add_argument("--host", required=True)
    p.add_argument("--store", required=True, help="sqlite:///abs/path.db or etcd://host:port")
    p.add_argument("--cluster", default="default")
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--drivers", default="process,qemu")
    p.add_argument("--netns", default=None, help="enter this network namespace first (the host's, in the lab)")
    p.add_argument("--host-netns", default=None, help="namespace of the host's virtual switch, if not our own")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--lease-ttl", type=int, default=10)
    p.add_argument("--ha-key", type=Path, default=None, help="cluster HMAC key file: send heartbeats, self-fence")
    p.add_argument("--migration-address", default=None,
                   help="this host's address other hosts reach for incoming live migrations (the lab's management address)")
    p.add_argument("--team-status", type=Path, default=None,
                   help="the host's team daemon status file: report team and NIC state into the store")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.netns:
        from nonstop.net.netns import enter

        enter(args.netns)  # before any thread exists, so every thread lives in the host's namespace
    options: dict[str, Any] = {}
    host_netns = args.host_netns or args.netns  # the switches live in the host's namespace
    if host_netns:
        options["host_netns"] = host_netns
        options["netns"] = host_netns
    if args.migration_address:
        options["migration_address"] = args.migration_address
    state_dir = args.state_dir or DEFAULT_STATE_DIR / args.cluster / args.host
    asyncio.run(run_agent(
        store_url=args.store, cluster=args.cluster, host=args.host, state_dir=state_dir,
        drivers=[d.strip() for d in args.drivers.split(",") if d.strip()], interval=args.interval,
        lease_ttl=args.lease_ttl, options=options, ha_key=args.ha_key, team_status=args.team_status,
    ))
