"""``nonstop lab ...``: build, inspect, break and remove the lab.

Role: parse arguments, call nonstop.lab (fabric, faults, forward), print. Verbs: ``up
FILE``, ``down [--cluster]``, ``status``, ``cut HOST NIC``, ``restore HOST [NIC]``,
``isolate HOST``, ``forward WHERE IP PORT``, ``unforward PORT``. ``--cluster`` may be left
out when exactly one lab is up. Exit codes as in docs/architecture.md.

Must not: hold lab logic.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from nonstop.lab import fabric, faults, forward, state

lab_app = typer.Typer(help="The lab: a whole cluster on this machine, in network namespaces.", no_args_is_help=True)

ClusterOpt = typer.Option(None, "--cluster", "-c", help="Cluster name (default: the only lab that is up).")


def _cluster(name: str | None) -> str:
    if name:
        return name
    running = state.clusters()
    if len(running) == 1:
        return running[0]
    if not running:
        typer.echo("no lab is up", err=True)
        raise typer.Exit(3)
    typer.echo(f"several labs are up ({', '.join(running)}): pass --cluster", err=True)
    raise typer.Exit(2)


def _running_spec(cluster: str):  # type: ignore[no-untyped-def]
    try:
        return fabric.load_running_spec(cluster)
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(3) from None


@lab_app.command("up")
def up(
    file: Path = typer.Argument(..., help="Cluster spec (YAML)."),
    no_processes: bool = typer.Option(False, "--no-processes", help="Build the network only (no daemons)."),
) -> None:
    """Build the lab (idempotent; removes leftovers of a crashed run first)."""
    from nonstop.specfile import SpecError, load_spec

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        spec = load_spec(file)
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    try:
        lab = fabric.up(spec, start_processes=not no_processes)
    except fabric.LabPlanError as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"lab {spec.cluster} is up: {len(lab.namespaces)} namespaces, {len(lab.processes)} processes")


@lab_app.command("down")
def down(cluster: str | None = ClusterOpt) -> None:
    """Remove every namespace, link, table, process and file the lab made."""
    name = _cluster(cluster)
    removed = fabric.down(name)
    typer.echo(f"lab {name} is down: removed {len(removed['namespaces'])} namespaces, {len(removed['processes'])} processes")


@lab_app.command("status")
def status(cluster: str | None = ClusterOpt) -> None:
    """Namespaces, processes, forwards and every cable's state, as JSON."""
    name = _cluster(cluster)
    try:
        typer.echo(json.dumps(fabric.status(name), indent=2))
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(3) from None


@lab_app.command("cut")
def cut(
    host: str,
    nic: str,
    end: str = typer.Option("switch", help="Which end goes down: switch, host or both."),
    cluster: str | None = ClusterOpt,
) -> None:
    """Cut a cable: the NIC loses carrier."""
    spec = _running_spec(_cluster(cluster))
    if end not in ("switch", "host", "both"):
        typer.echo("--end must be switch, host or both", err=True)
        raise typer.Exit(2)
    try:
        faults.cut(spec, host, nic, end)  # type: ignore[arg-type]
    except faults.UnknownCableError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"cut {host} {nic}")


@lab_app.command("restore")
def restore(host: str, nic: str | None = typer.Argument(None), cluster: str | None = ClusterOpt) -> None:
    """Plug a cable back in (every cable of HOST when NIC is left out)."""
    spec = _running_spec(_cluster(cluster))
    try:
        restored = [nic] if nic else faults.rejoin(spec, host)
        if nic:
            faults.restore(spec, host, nic)
    except faults.UnknownCableError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"restored {host} {' '.join(restored)}")


@lab_app.command("isolate")
def isolate(host: str, cluster: str | None = ClusterOpt) -> None:
    """Cut every cable of HOST (``nonstop lab restore HOST`` plugs them back)."""
    spec = _running_spec(_cluster(cluster))
    try:
        nics = faults.isolate(spec, host)
    except faults.UnknownCableError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"isolated {host} ({' '.join(nics)} cut)")


@lab_app.command("forward")
def forward_cmd(
    where: str = typer.Argument(..., help="ctl, out, fab or a host name."),
    ip: str = typer.Argument(..., help="Address inside that namespace."),
    port: int = typer.Argument(...),
    listen_port: int = typer.Option(0, "--listen-port", "-l", help="127.0.0.1 port (0: any free one)."),
    cluster: str | None = ClusterOpt,
) -> None:
    """Forward 127.0.0.1:LISTEN_PORT to IP:PORT inside a lab namespace (stopped by lab down)."""
    name = _cluster(cluster)
    try:
        record = forward.start_forward(name, where, (ip, port), listen_port)
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except RuntimeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{record['listen']} -> {where} {ip}:{port} (pid {record['pid']})")


@lab_app.command("unforward")
def unforward(port: int, cluster: str | None = ClusterOpt) -> None:
    """Stop the forwarder listening on 127.0.0.1:PORT."""
    if not forward.stop_forward(_cluster(cluster), port):
        typer.echo(f"no forward on port {port}", err=True)
        raise typer.Exit(1)
    typer.echo(f"stopped forward on 127.0.0.1:{port}")


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
