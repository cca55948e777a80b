"""Run one lab host's BMC as its own process: ``python -m nonstop.bmc --spec S --host H ...``.

Role: the process form of ``start_bmc`` for the lab. It must run OUTSIDE the host's
namespace (a power-off kills everything inside). Hooks are shell-free commands (split
with shlex) run with the event in the environment:

- ``--on-power-on CMD``: ``NONSTOP_BMC_EVENT=power-on``; the lab restarts the host's agent.
- ``--on-nic CMD``: ``NONSTOP_BMC_EVENT=nic NONSTOP_BMC_NIC=eth1 NONSTOP_BMC_UP=0|1``; the
  lab cuts or restores that NIC's cable.
- ``--on-component CMD``: ``NONSTOP_BMC_EVENT=component NONSTOP_BMC_KIND=psu|nic|drive
  NONSTOP_BMC_NAME=... NONSTOP_BMC_FAILED=0|1``.

Once listening it writes ``{"url", "port", "pid", "host"}`` to ``--ready-file`` (so port 0
works) and serves until SIGTERM/SIGINT.

Must not: run inside the namespace it powers off, or pass hook commands through a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
from pathlib import Path

from nonstop.bmc.model import ComponentKind, HostHardware
from nonstop.bmc.server import BmcConfig, BmcHooks, start_bmc

log = logging.getLogger("nonstop.bmc")


def command_hook(argv: list[str], host: str, **fixed: str):  # type: ignore[no-untyped-def]
    async def run(**env: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv, env={**os.environ, "NONSTOP_BMC_HOST": host, **fixed, **env}
        )
        rc = await proc.wait()
        if rc != 0:
            log.warning("hook %s exited %s", argv, rc)

    return run


def build_hooks(args: argparse.Namespace) -> BmcHooks:
    hooks = BmcHooks()
    if args.on_power_on:
        power_on = command_hook(shlex.split(args.on_power_on), args.host, NONSTOP_BMC_EVENT="power-on")

        async def on_power_on() -> None:
            await power_on()

        hooks.on_power_on = on_power_on
    if args.on_nic:
        nic_hook = command_hook(shlex.split(args.on_nic), args.host, NONSTOP_BMC_EVENT="nic")

        async def on_nic(nic: str, up: bool) -> None:
            await nic_hook(NONSTOP_BMC_NIC=nic, NONSTOP_BMC_UP="1" if up else "0")

        hooks.on_nic = on_nic
    if args.on_component:
        component_hook = command_hook(shlex.split(args.on_component), args.host, NONSTOP_BMC_EVENT="component")

        async def on_component(kind: ComponentKind, name: str, failed: bool) -> None:
            await component_hook(NONSTOP_BMC_KIND=kind.value, NONSTOP_BMC_NAME=name, NONSTOP_BMC_FAILED="1" if failed else "0")

        hooks.on_component = on_component
    return hooks


async def serve(args: argparse.Namespace) -> None:
    from nonstop.specfile import load_spec

    spec = load_spec(args.spec)
    host = spec.host(args.host)
    password = Path(args.password_file).read_text().strip() if args.password_file else "password"
    config = BmcConfig(HostHardware.from_spec(host), args.netns, username=host.bmc.username, password=password,
                       listen=args.listen, port=args.port, graceful_timeout=args.graceful_timeout)
    running = await start_bmc(config, build_hooks(args))
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"url": running.url, "port": running.port, "pid": os.getpid(), "host": args.host}))
        tmp.replace(args.ready_file)
    log.info("BMC of %s on %s (namespace %s)", args.host, running.url, args.netns)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(running.server, "should_exit", True))
    await running.task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nonstop.bmc", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="cluster spec (lab.yaml)")
    parser.add_argument("--host", required=True)
    parser.add_argument("--netns", help="the host's namespace (nonstop-<cluster>-<host>); none: power-off kills nothing")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--password-file")
    parser.add_argument("--graceful-timeout", type=float, default=5.0)
    parser.add_argument("--ready-file")
    parser.add_argument("--on-power-on")
    parser.add_argument("--on-nic")
    parser.add_argument("--on-component")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
