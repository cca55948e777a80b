"""``nonstop controller ...`` and ``nonstop cluster up|down``: the controller process and a
whole lab cluster by hand.

Role: ``controller`` hands its arguments to ``nonstop.controller.main`` (the same as
``python -m nonstop.controller``). ``cluster up FILE [--store URL]`` builds a ``LabCluster``
(fabric, BMCs, store, balancers, controller, agents), prints where things are, and keeps it up
until Ctrl-C or SIGTERM, then removes it; ``cluster down --cluster C`` removes a cluster left
behind (the lab's ``down`` plus its per-host cgroups).

Must not: hold controller or lab logic.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import typer

cluster_app = typer.Typer(help="A whole nonstop cluster in the lab (controller, agents, balancers).",
                          no_args_is_help=True)


def register(app: typer.Typer) -> None:
    @app.command("controller", add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def controller(ctx: typer.Context) -> None:
        """Run the controller: --store URL --cluster NAME --ha-key FILE --listen LINK=IP:PORT ... (see --help)."""
        from nonstop.controller.main import main

        main(list(ctx.args))

    @cluster_app.command("up")
    def up(
        spec_file: Path = typer.Argument(..., help="cluster spec (YAML)"),
        store: str = typer.Option(None, "--store", help="store URL (default sqlite:///var/lib/nonstop/<cluster>.db)"),
        drivers: str = typer.Option("process", "--drivers", help="agent drivers: process, qemu"),
    ) -> None:
        """Build the cluster in the lab and keep it running until Ctrl-C."""
        from nonstop.lab.cluster import LabCluster
        from nonstop.specfile import SpecError, load_spec

        try:
            spec = load_spec(spec_file)
        except SpecError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        if store is None:
            Path("/var/lib/nonstop").mkdir(parents=True, exist_ok=True)
            store = f"sqlite:////var/lib/nonstop/{spec.cluster}.db"
        lab = LabCluster(spec, store, drivers=drivers)
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        try:
            lab.start(lambda text: typer.echo(f"- {text}"))
            typer.echo(json.dumps(lab.status(), indent=2))
            typer.echo("cluster up; Ctrl-C removes it")
            done.wait()
        finally:
            typer.echo("removing the cluster")
            lab.stop()

    @cluster_app.command("down")
    def down(cluster: str = typer.Option(..., "--cluster", "-c")) -> None:
        """Remove a lab cluster left behind (processes, namespaces, cgroups, run directory)."""
        from nonstop.lab import fabric
        from nonstop.lab.cluster import LabCluster

        spec = fabric.load_running_spec(cluster)
        LabCluster(spec, "sqlite:///dev/null").stop()
        typer.echo(f"cluster {cluster} removed")

    app.add_typer(cluster_app, name="cluster")
