"""CLI verb ``nonstop plan FILE``: where every guest of a spec would run, and whether HA holds.

Role: load the spec (``nonstop.specfile``), ask the pure core for the plan
(``nonstop.core.placement.report.plan_spec``) and print it — a rich table per host
(physical vs allocated per resource with the overcommit, guests), unplaced guests with
the reason, the HA verdict "tolerates F host failure(s): yes/no" with its reason, and
with ``--explain GUEST`` every filter step and weigher score of that guest's decision.
``--json`` prints the same as JSON. Exit codes (docs/placement.md): 0 every guest placed
and HA holds; 2 the spec is invalid or the guest to explain does not exist; 3 the plan
is not viable (a guest cannot be placed, or the cluster does not tolerate F failures).

Must not: start or write anything; decide anything (the core does).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from nonstop.core.placement.report import ResourceLine, SpecPlan, plan_spec
from nonstop.core.placement.results import Explanation
from nonstop.core.units import format_size
from nonstop.specfile import SpecError, load_spec

EXIT_NOT_VIABLE = 3
EXIT_BAD_INPUT = 2


def _cpu(line: ResourceLine) -> str:
    return f"{line.allocated:g} / {line.physical:g}  ({line.overcommit:.2f}×, max {line.effective:g})"


def _bytes(line: ResourceLine) -> str:
    return (f"{format_size(line.allocated)} / {format_size(line.physical)}  "
            f"({line.overcommit:.2f}×, max {format_size(line.effective)})")


def _host_table(plan: SpecPlan) -> Table:
    table = Table(title=f"Placement plan for cluster {plan.cluster}", title_justify="left")
    table.add_column("host")
    table.add_column("state")
    table.add_column("cpu allocated / physical")
    table.add_column("memory allocated / physical")
    table.add_column("disk allocated / physical")
    table.add_column("guests", justify="right")
    table.add_column("names", overflow="fold")
    for host in plan.hosts:
        cpu, memory, disk = host.resources
        table.add_row(host.name, host.condition, _cpu(cpu), _bytes(memory), _bytes(disk),
                      str(len(host.guests)), ", ".join(host.guests))
    return table


def _explanation_tables(explanation: Explanation) -> list[Table]:
    filters = Table(title=f"Why {explanation.guest}: filters", title_justify="left")
    filters.add_column("filter")
    filters.add_column("removed", justify="right")
    filters.add_column("hosts removed", overflow="fold")
    filters.add_column("left", justify="right")
    for step in explanation.filters:
        more = "" if step.removed <= len(step.removed_hosts) else f" … +{step.removed - len(step.removed_hosts)}"
        filters.add_row(step.filter, str(step.removed), ", ".join(step.removed_hosts) + more, str(step.remaining))
    scores = Table(title=f"Why {explanation.guest}: weighers (chosen host first)", title_justify="left")
    scores.add_column("host")
    scores.add_column("total", justify="right")
    for weigher in (explanation.chosen.scores if explanation.chosen else ()):
        scores.add_column(f"{weigher.weigher} ×{weigher.weight:g}\nraw → normalized", justify="right")
    for host in ((explanation.chosen,) if explanation.chosen else ()) + explanation.runners_up:
        cells = [f"{s.raw:.3f} → {s.normalized:.3f}" for s in host.scores]
        scores.add_row(host.host, f"{host.total:.4f}", *cells)
    return [filters, scores]


def plan(
    file: Path = typer.Argument(..., help="Cluster spec (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    explain: str | None = typer.Option(None, "--explain", metavar="GUEST",
                                       help="Show every filter step and weigher score of one guest's decision."),
) -> None:
    """Place every guest of a spec; print hosts, overcommit and the HA verdict. Exit 3 if not viable."""
    try:
        spec = load_spec(file)
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    guest_names = {name for group in spec.guests for name in group.guest_names()}
    if explain is not None and explain not in guest_names:
        typer.echo(f"{file}: no guest named {explain!r} (guests are <group>-<i>, e.g. "
                   f"{next(iter(sorted(guest_names)), 'web-0')})", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    result = plan_spec(spec, explain=[explain] if explain else [])
    exit_code = 0 if result.viable else EXIT_NOT_VIABLE
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        raise typer.Exit(exit_code)
    console = Console(width=max(Console().width, 140))
    console.print(_host_table(result))
    for unplaced in result.placement.unplaced:
        console.print(f"[red]not placed[/red] {unplaced.guest}: {unplaced.reason}")
    ha = result.admission
    failures = ha.failures
    verdict = "[green]yes[/green]" if ha.tolerates else "[red]no[/red]"
    headroom = ", ".join(f"{r} {v:+.0%}" for r, v in ha.headroom.items())
    console.print(f"tolerates {failures} host failure{'s' if failures != 1 else ''}: {verdict} — {ha.reason}")
    if ha.worst_case:
        console.print(f"worst case: {', '.join(ha.worst_case)} failing; headroom left: {headroom}")
    if explain:
        explanation = result.placement.explanations.get(explain)
        if explanation is not None:
            for table in _explanation_tables(explanation):
                console.print(table)
            console.print(f"decision: {explanation.reason}")
    raise typer.Exit(exit_code)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
