"""CLI verbs for guests and the host agent: ``nonstop agent`` and ``nonstop guest run``.

Role: parse arguments and hand over — ``agent`` to ``nonstop.agent.main``; ``guest run`` starts one
process guest by hand with the process driver (a quick way to try the workload, limits and
identity page without a cluster) and stops it on Ctrl-C.

Must not: hold agent or driver logic.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from nonstop.core.units import parse_size


def register(app: typer.Typer) -> None:
    @app.command(
        "agent",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
        help="Run the host agent: --host NAME --store URL [--cluster NAME] [--drivers process,qemu] "
        "[--netns NS] [--host-netns NS] [--state-dir DIR] [--interval S].",
    )
    def agent(ctx: typer.Context) -> None:
        from nonstop.agent.main import main as agent_main

        agent_main(list(ctx.args))

    guest = typer.Typer(help="Try guests by hand.", no_args_is_help=True)
    app.add_typer(guest, name="guest")

    @guest.command("run", help="Start one process guest (built-in workload unless a command follows --) until Ctrl-C.")
    def run(
        name: str = typer.Argument("try-0"),
        vcpus: int = typer.Option(1),
        memory: str = typer.Option("128MiB"),
        port: int = typer.Option(8080),
        cluster: str = typer.Option("try"),
        state_dir: Path = typer.Option(Path("/tmp/nonstop-guest-run")),
        command: list[str] = typer.Argument(None),
    ) -> None:
        from nonstop.drivers.base import GuestDefinition, GuestStartError
        from nonstop.drivers.probe import http_get, wait_http_ok
        from nonstop.drivers.process import ProcessDriver
        from nonstop.drivers.process_net import netns_name

        async def go() -> int:
            driver = ProcessDriver(cluster=cluster, host="local", state_dir=state_dir)
            definition = GuestDefinition(name=name, cluster=cluster, host="local", vcpus=vcpus,
                                         memory=parse_size(memory), port=port,
                                         command=tuple(command) if command else None)
            try:
                status = await driver.spawn(definition)
            except GuestStartError as exc:
                typer.echo(f"failed: {exc.reason}", err=True)
                return 1
            ns = netns_name(cluster, name)
            try:
                if not command:
                    took = await asyncio.to_thread(wait_http_ok, ns, "127.0.0.1", port)
                    _, body = await asyncio.to_thread(http_get, ns, "127.0.0.1", port, "/")
                    typer.echo(f"serving after {took * 1000:.0f} ms in netns {ns}: {json.loads(body)}")
                typer.echo(f"pid {status.pid}, boot {status.boot_id}; Ctrl-C stops it")
                while (await driver.status(name)).state.value == "running":
                    await asyncio.sleep(0.5)
                final = await driver.status(name)
                typer.echo(f"guest {final.state.value}: {final.failure_reason or ''}")
            except (KeyboardInterrupt, asyncio.CancelledError):
                pass
            finally:
                await driver.destroy(name)
            return 0

        try:
            code = asyncio.run(go())
        except KeyboardInterrupt:
            code = 0
        raise typer.Exit(code)
