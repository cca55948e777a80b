"""CLI verb ``nonstop patch``: roll a patch level over the cluster's hosts, one batch at a time.

Role: parse the options, optionally enter a network namespace (``--netns``: where the balancers'
admin addresses are reachable; the lab's ctl namespace), and drive ``nonstop.patching.executor.
Patcher``: ``--dry-run`` prints the planner's batches (or its refusal with the reasons, exit 3);
otherwise start a rollout (or ``--resume`` / ``--abort`` the one in the store) and run it with rich
progress bars (the rollout and each host's step), then print the report (rich table and JSON).
Exit codes: 0 complete (every host at the target), 1 failed/aborted, 3 refused by the planner.

``--simulate fail|hang`` replaces the lab's default command by one that exits 3 or sleeps past
the timeout (for tests and demonstrations).

Must not: decide anything (the core planner and step machine do) or run commands on hosts (the
agents do, through the store).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from nonstop.core.patching.steps import ACTIVE_ORDER, Rollout, Step
from nonstop.patching import SIMULATED

EXIT_FAILED, EXIT_REFUSED = 1, 3


class _Bars:
    """One bar for the rollout (hosts done) and one per host (its steps)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.enabled = enabled
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[step]}"),
                                 TimeElapsedColumn(), console=console, disable=not enabled)
        self.tasks: dict[str, Any] = {}

    def update(self, rollout: Rollout, text: str) -> None:
        if not self.enabled:
            print(text, file=sys.stderr, flush=True)  # stdout stays the report (JSON with --json)
            return
        if "rollout" not in self.tasks:
            self.tasks["rollout"] = self.progress.add_task(f"rollout to {rollout.target}", total=len(rollout.hosts),
                                                           step="")
        done = sum(1 for p in rollout.hosts.values() if p.step is Step.DONE)
        self.progress.update(self.tasks["rollout"], completed=done, step=text)
        for host, p in rollout.hosts.items():
            if host not in self.tasks:
                self.tasks[host] = self.progress.add_task(f"  {host}", total=len(ACTIVE_ORDER), step="pending")
            index = ACTIVE_ORDER.index(p.step) if p.step in ACTIVE_ORDER else (
                len(ACTIVE_ORDER) if p.step is Step.DONE else 0)
            self.progress.update(self.tasks[host], completed=index, step=p.step.value)


async def _run(store_url: str, cluster: str, *, to: str | None, command: str | None, hosts: list[str] | None,
               max_unavailable: int, dry_run: bool, resume: bool, abort: bool, balancers: dict[str, str],
               timeout: float, restart_agent: bool, as_json: bool, console: Console) -> int:
    from nonstop.patching import cluster as pc
    from nonstop.patching.executor import Patcher, RolloutError
    from nonstop.patching.report import report, table
    from nonstop.store import open_store

    store = open_store(store_url)
    bars = _Bars(console, enabled=console.is_terminal and not as_json)
    patcher = Patcher(store, cluster, balancers=balancers, progress=bars.update)
    try:
        if dry_run:
            plan = await patcher.plan(to or "", hosts, max_unavailable)
            if as_json:
                print(json.dumps(plan.to_dict(), indent=2))
            else:
                for i, batch in enumerate(plan.batches, 1):
                    console.print(f"batch {i}: {', '.join(batch)}")
                for host, why in plan.skipped:
                    console.print(f"skip {host}: {why}")
                for reason in plan.refused:
                    console.print(f"[red]refused[/red]: {reason}")
            return 0 if plan.ok else EXIT_REFUSED
        try:
            if abort:
                rollout = await patcher.abort()
            elif resume:
                await patcher.resume()
            else:
                if not to:
                    console.print("--to LEVEL is required to start a rollout")
                    return 2
                await patcher.start(to, hosts=hosts, max_unavailable=max_unavailable, command=command,
                                    restart_agent=restart_agent, timeout=timeout)
            if not abort:
                with bars.progress:
                    rollout = await patcher.run()
        except RolloutError as exc:
            console.print(f"[red]{exc}[/red]")
            return EXIT_REFUSED if "refuses" in str(exc) else EXIT_FAILED
        snap = await pc.snapshot(store, cluster)
        doc = report(rollout, snap.levels())
        if as_json:
            print(json.dumps(doc, indent=2))
        else:
            console.print(table(doc))
            console.print_json(json.dumps(doc))
        return 0 if doc["complete"] else EXIT_FAILED
    finally:
        await store.close()


def register(app: typer.Typer) -> None:
    @app.command("patch")
    def patch(
        store: str = typer.Option(..., "--store", help="sqlite:///abs/path.db or etcd://host:port"),
        cluster: str = typer.Option(..., "--cluster"),
        to: str = typer.Option(None, "--to", help="the patch level every host must end at"),
        command: str = typer.Option(None, "--command", help="shell command the agent runs on each host"),
        hosts: str = typer.Option(None, "--hosts", help="comma-separated hosts (default: all)"),
        max_unavailable: int = typer.Option(1, "--max-unavailable"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and exit"),
        resume: bool = typer.Option(False, "--resume", help="continue the rollout in the store"),
        abort: bool = typer.Option(False, "--abort", help="end the rollout, leaving the cluster serving"),
        balancer: list[str] = typer.Option([], "--balancer", help="SERVICE=IP:PORT of a balancer's admin API"),
        netns: str = typer.Option(None, "--netns", help="enter this network namespace first (lab: ctl)"),
        timeout: float = typer.Option(120.0, "--timeout", help="seconds the patch command may run"),
        no_restart_agent: bool = typer.Option(False, "--no-restart-agent"),
        simulate: str = typer.Option(None, "--simulate", help="lab: fail | hang instead of patching"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Patch every host to --to LEVEL, one batch at a time, without stopping the service."""
        if netns:
            from nonstop.net.netns import enter

            enter(netns)
        if simulate:
            if simulate not in SIMULATED:
                raise typer.BadParameter("--simulate takes fail or hang")
            command = SIMULATED[simulate]
        balancers = dict(b.split("=", 1) for b in balancer)
        code = asyncio.run(_run(
            store, cluster, to=to, command=command, hosts=[h for h in hosts.split(",") if h] if hosts else None,
            max_unavailable=max_unavailable, dry_run=dry_run, resume=resume, abort=abort, balancers=balancers,
            timeout=timeout, restart_agent=not no_restart_agent, as_json=as_json, console=Console(),
        ))
        raise typer.Exit(code)

    @app.command("rolling-update")
    def rolling_update(
        group: str = typer.Argument(..., help="the guest group to update"),
        store: str = typer.Option(..., "--store"),
        cluster: str = typer.Option(..., "--cluster"),
        command: str = typer.Option(None, "--command", help="the new version's command (shell words)"),
        image: str = typer.Option(None, "--image", help="the new version's image"),
        resume: bool = typer.Option(False, "--resume", help="continue the update in the store"),
        balancer: list[str] = typer.Option([], "--balancer", help="SERVICE=IP:PORT of a balancer's admin API"),
        netns: str = typer.Option(None, "--netns", help="enter this network namespace first (lab: ctl)"),
        health_timeout: float = typer.Option(20.0, "--health-timeout"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Surge one new replica, replace the old ones one by one, roll back if the new version is unhealthy.
        Exit 0 done, 1 rolled back or failed."""
        import shlex

        if netns:
            from nonstop.net.netns import enter

            enter(netns)
        new: dict[str, Any] = {}
        if command is not None:
            new["command"] = shlex.split(command)
        if image is not None:
            new["image"] = image
        code = asyncio.run(_update(store, cluster, group, new, resume, dict(b.split("=", 1) for b in balancer),
                                   health_timeout, as_json))
        raise typer.Exit(code)


async def _update(store_url: str, cluster: str, group: str, new: dict[str, Any], resume: bool,
                  balancers: dict[str, str], health_timeout: float, as_json: bool) -> int:
    from nonstop.patching.guest_update import GuestUpdater, UpdateError
    from nonstop.store import open_store

    store = open_store(store_url)
    console = Console()
    updater = GuestUpdater(store, cluster, balancers=balancers, health_timeout=health_timeout,
                           progress=(lambda t: None) if as_json else console.print)
    try:
        if not resume:
            if not new:
                console.print("give --command and/or --image")
                return 2
            await updater.start(group, new)
        update = await updater.run(group)
    except UpdateError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        await store.close()
    if as_json:
        print(json.dumps(update.to_dict(), indent=2))
    return 0 if update.phase.value == "done" else 1


__all__ = ["SIMULATED", "register"]
