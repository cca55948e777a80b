"""``nonstop up FILE``, ``nonstop down`` and ``nonstop demo FILE``.

Role: parse arguments, load the spec (every problem printed with file:line, exit 2, nothing
started), and hand over to ``nonstop.up.session`` / ``nonstop.demo.tour``. Exit codes: 0 success,
1 the operation failed, 2 bad input (spec or arguments), 3 the cluster's state does not allow it.

Must not: hold orchestration logic.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from nonstop.core.spec import ClusterSpec

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _load(spec_file: Path) -> tuple[ClusterSpec, str]:
    from nonstop.specfile import SpecError, load_spec

    try:
        return load_spec(spec_file), spec_file.read_text()
    except SpecError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"cannot read {spec_file}: {exc}", markup=False)
        raise typer.Exit(2) from None


def _say(text: str) -> None:
    out.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}", soft_wrap=True)


def _apply(record: dict[str, Any], spec: ClusterSpec, text: str, spec_file: Path) -> None:
    from nonstop.up.session import apply_to_running

    try:
        result = asyncio.run(apply_to_running(record, spec, text, str(spec_file)))
    except ValueError as exc:
        err.print(f"cluster {spec.cluster} is running (pid {record['pid']}): {exc}", markup=False)
        raise typer.Exit(3) from None
    except Exception as exc:  # noqa: BLE001
        problems = getattr(exc, "problems", None)
        err.print(f"apply failed: {exc}" + (f" {problems}" if problems else ""), markup=False)
        raise typer.Exit(1) from None
    if result.get("applied"):
        out.print(f"cluster {spec.cluster} is running (pid {record['pid']}); applied: "
                  + "; ".join(result.get("changes", [])))
        _print_services(spec, record, int(result.get("revision", 0)))
    else:
        out.print(f"cluster {spec.cluster} is running (pid {record['pid']}); the spec is unchanged")


def _print_services(spec: ClusterSpec, record: dict[str, Any], revision: int, timeout: float = 30.0) -> None:
    """Wait until the running session's balancers follow the applied spec (``revision``); print
    where each service answers."""
    from nonstop.up import runfiles

    deadline = time.monotonic() + timeout
    current = runfiles.running(spec.cluster) or record
    while int(current.get("services_revision") or 0) < revision and time.monotonic() < deadline:
        time.sleep(0.2)
        current = runfiles.running(spec.cluster) or record
    services = current.get("services") or {}
    if int(current.get("services_revision") or 0) < revision:
        err.print(f"the running cluster's balancers did not follow the applied spec within {timeout:.0f} s "
                  f"(see the `nonstop up` output)", markup=False)
        raise typer.Exit(1)
    if current.get("services_error"):
        err.print(f"the running cluster could not apply the services: {current['services_error']}", markup=False)
        raise typer.Exit(1)
    for name in sorted(services):
        out.print(f"service {name}: http://{services[name]}/")


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(spec_file: Path = typer.Argument(..., help="cluster spec (YAML)"),
           store: str = typer.Option(None, "--store", help="store URL: sqlite:///path (default "
                                     "/var/lib/nonstop/<cluster>.db) or etcd://127.0.0.1:PORT"),
           detach: bool = typer.Option(False, "--detach", help="run in the background once serving; "
                                       "`nonstop down` stops it"),
           drivers: str = typer.Option(None, "--drivers", help="agent drivers (default: process, plus qemu "
                                       "when the spec has VMs)"),
           api_port: int = typer.Option(8700, "--api-port", help="API/dashboard port (a free one if taken)"),
           serve_timeout: float = typer.Option(240.0, "--serve-timeout", help="seconds to wait for every "
                                               "guest and service before printing the summary")) -> None:
        """Bring the whole cluster up in the lab and keep it running until Ctrl-C or `nonstop down`;
        on a running cluster, apply the changed spec and exit."""
        from nonstop.up import runfiles
        from nonstop.up.session import UpSession

        spec, text = _load(spec_file)
        record = runfiles.running(spec.cluster)
        if record is not None and record.get("pid") != os.getpid():
            _apply(record, spec, text, spec_file)
            return
        if detach:
            _detach(spec.cluster, serve_timeout)
        session = UpSession(spec, spec_file.resolve(), store, drivers=drivers, api_port=api_port, say=_say,
                            serve_timeout=serve_timeout)
        raise typer.Exit(session.run())

    @app.command("down")
    def down(cluster: str = typer.Option(None, "--cluster", "-c", help="default: the only cluster up here"),
             timeout: float = typer.Option(120.0, "--timeout", help="seconds to wait for `up` to finish")) -> None:
        """Stop a running `nonstop up` (it removes everything), or remove what a crashed one left."""
        from nonstop.up import runfiles

        if cluster is None:
            found = runfiles.running_clusters()
            if len(found) != 1:
                err.print("no cluster is up here" if not found else
                          f"several clusters are up ({', '.join(found)}): pass --cluster")
                raise typer.Exit(3)
            cluster = found[0]
        began = time.monotonic()
        record = runfiles.running(cluster)
        if record is not None:
            out.print(f"stopping `nonstop up` of {cluster} (pid {record['pid']})")
            if not runfiles.signal_and_wait(int(record["pid"]), timeout):
                err.print(f"pid {record['pid']} did not finish in {timeout:.0f} s")
                raise typer.Exit(1)
        removed = runfiles.clean_leftovers(cluster)
        if removed:
            out.print("removed leftovers: " + "; ".join(removed))
        out.print(f"cluster {cluster} is down ({time.monotonic() - began:.1f} s)")

    @app.command("demo")
    def demo(spec_file: Path = typer.Argument(..., help="cluster spec (YAML)"),
             json_out: Path = typer.Option(None, "--json", help="write the report as JSON here"),
             plot: Path = typer.Option(Path("demo.png"), "--plot", help="PNG of request rate and latency"),
             non_interactive: bool = typer.Option(False, "--non-interactive", help="no pauses between steps"),
             rate: float = typer.Option(None, "--rate", help="requests per second through the balancer "
                                        "(default: 40 for process replicas, 10 for VM replicas under TCG)"),
             service: str = typer.Option(None, "--service", help="service to load (default: the first)"),
             path: str = typer.Option(None, "--path", help="path to GET (default: / for process replicas, "
                                      "/health — a static file — for VM replicas)"),
             keep: bool = typer.Option(False, "--keep", help="leave a lab the demo started running")) -> None:
        """A scripted availability tour: load through the balancer while a host dies, a link is cut,
        a host is partitioned and everything heals; prints a report and writes a plot."""
        from nonstop.demo.tour import run_tour

        spec, _ = _load(spec_file)
        report = run_tour(spec, spec_file.resolve(), say=_say, interactive=not non_interactive and sys.stdin.isatty(),
                          rate=rate, service=service, path=path, plot=plot, keep=keep)
        if json_out:
            json_out.write_text(json.dumps(report, indent=2))
            out.print(f"report: {json_out}")
        raise typer.Exit(0 if report.get("completed") else 1)


def _detach(cluster: str, serve_timeout: float) -> None:
    """Fork: the child goes on as `up` (its output to a log); the parent waits until it serves, prints
    the log, and exits."""
    log = Path(f"/tmp/nonstop-up-{cluster}.log")  # outside the run directory, which `down` removes
    log.write_text("")  # before the fork: the parent must not show an earlier run's log
    pid = os.fork()
    if pid == 0:
        os.setsid()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        out.file = sys.stdout
        return
    deadline = time.monotonic() + serve_timeout + 120
    shown = 0
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
        if "Ctrl-C or `nonstop down`" in text:
            print(f"`nonstop up` runs in the background (pid {pid}, log {log}); `nonstop down` stops it")
            raise typer.Exit(0)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise typer.Exit(1)
        time.sleep(0.3)
    raise typer.Exit(1)
