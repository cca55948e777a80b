"""The ``nonstop lb`` verb: run the load balancer from a YAML config.

Role: parse options, load the config (problems -> exit 2 with file:line field: message),
run ``nonstop.lb.runtime.Balancer`` on uvloop until SIGTERM/SIGINT; SIGHUP reloads.

Must not: hold balancer logic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from nonstop.specfile import SpecError


def register(app: typer.Typer) -> None:
    @app.command("lb")
    def lb(
        config: Path = typer.Option(..., "--config", "-c", help="lb.yaml: services: [...] and admin: 127.0.0.1:PORT"),
        workers: int = typer.Option(1, "--workers", "-w", min=1, max=64, help="SO_REUSEPORT worker processes"),
        nft_table: str = typer.Option("nonstop_lb", "--nft-table", help="nftables table of nft-mode services"),
        log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error"),
        check: bool = typer.Option(False, "--check", help="only validate the config and exit"),
    ) -> None:
        """Run nonstop's load balancer (L7 HTTP, L4 TCP, kernel nftables) from a config file."""
        import uvloop

        from nonstop.lb.config import load_config
        from nonstop.lb.runtime import Balancer

        logging.basicConfig(
            level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(name)s %(message)s"
        )
        try:
            cfg = load_config(config)
        except SpecError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        if check:
            typer.echo(f"{config}: {len(cfg.services)} services, OK")
            return
        if workers > 1 and any(s.listen.endswith(":0") for s in cfg.services if s.mode != "nft"):
            typer.echo("--workers needs fixed listen ports (not :0)", err=True)
            raise typer.Exit(2)
        balancer = Balancer(cfg, config_path=config, workers=workers, nft_table=nft_table)
        uvloop.run(balancer.run_until_signalled())
