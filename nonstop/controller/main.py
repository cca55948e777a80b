"""Running the controller process: ``nonstop controller`` / ``python -m nonstop.controller``.

Role: parse options, optionally enter a network namespace first (in the lab: the ctl
namespace, which has one leg on every switch), open the store, load the cluster key, run
``Controller.run`` term after term until SIGTERM/SIGINT: a controller that is not the leader
stands by (hot standby) and leads when the leader's lease ends; one that loses its leadership
starts over as a candidate (docs/ha.md, "Controller leadership").

```
nonstop controller --store URL --cluster NAME --ha-key FILE
    --listen LINK=IP:PORT [--listen ...]      heartbeat endpoints, one per management network
    [--balancer SERVICE=IP:PORT ...]          admin API of each service's balancer
    [--bmc HOST=IP:PORT ...] [--bmc-password-file FILE] [--fence-timeout 5]
    [--netns NS] [--tick 0.2] [--startup-grace 5] [--step-pause 0]
```

Must not: hold controller logic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from nonstop.controller.controller import Controller
from nonstop.controller.endpoints import Endpoint

log = logging.getLogger("nonstop.controller")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"--{what} expects NAME=IP:PORT, got {value!r}")
        out[name] = rest
    return out


def endpoints_from(values: list[str]) -> list[Endpoint]:
    out = []
    for link, where in _pairs(values, "listen").items():
        addr, _, port = where.rpartition(":")
        prefix = 24
        if "/" in addr:
            addr, _, bits = addr.partition("/")
            prefix = int(bits)
        out.append(Endpoint(link, addr, int(port), prefix))
    return out


async def run_controller(args: argparse.Namespace) -> None:
    from nonstop.ha.keys import load_key
    from nonstop.store import open_store
    from nonstop.store.base import StoreError

    store = open_store(args.store)

    def make() -> Controller:
        return Controller(
            store, args.cluster, key=load_key(args.ha_key), endpoints=endpoints_from(args.listen),
            balancers=_pairs(args.balancer, "balancer"), bmcs=_pairs(args.bmc, "bmc"),
            bmc_password_file=args.bmc_password_file, fence_timeout=args.fence_timeout, tick=args.tick,
            startup_grace=args.startup_grace, controller_id=args.id, step_pause=args.step_pause,
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_pid = os.getpid()

    def handler(signum: int, _frame: object) -> None:
        if os.getpid() == main_pid:  # not a forked helper's signal (see nonstop/agent/main.py)
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    try:
        while not stop.is_set():
            # One Controller per term: a controller that lost its leadership returns, and a fresh
            # one (no state carried over from the old term) stands by and campaigns again.
            try:
                await make().run(stop)
            except StoreError as exc:
                log.warning("store error before leading: %s; campaigning again", exc)
                await asyncio.sleep(0.5)
    finally:
        await store.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nonstop controller", description="the cluster's controller")
    p.add_argument("--store", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--ha-key", type=Path, required=True, help="cluster HMAC key file (mode 0600)")
    p.add_argument("--listen", action="append", default=[], help="LINK=IP[/PREFIX]:PORT heartbeat endpoint")
    p.add_argument("--balancer", action="append", default=[], help="SERVICE=IP:PORT balancer admin API")
    p.add_argument("--bmc", action="append", default=[], help="HOST=IP:PORT Redfish BMC")
    p.add_argument("--bmc-password-file", type=Path, default=None)
    p.add_argument("--fence-timeout", type=float, default=5.0)
    p.add_argument("--tick", type=float, default=0.2)
    p.add_argument("--startup-grace", type=float, default=5.0)
    p.add_argument("--step-pause", type=float, default=0.0,
                   help="hold each persisted failover step this long (tests: kill the controller at a known step)")
    p.add_argument("--netns", default=None, help="enter this network namespace first (the lab's ctl)")
    p.add_argument("--id", default=None, help="controller id (default controller@<hostname>; a restart with the "
                   "same id takes over its own leader record at once)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if not args.listen:
        p.error("at least one --listen LINK=IP:PORT is needed")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.netns:
        from nonstop.net.netns import enter

        enter(args.netns)
    asyncio.run(run_controller(args))
