"""CLI verbs for spec files: ``nonstop validate FILE`` and ``nonstop schema``.

Role: parse arguments, call ``nonstop.specfile``, print the result (plain lines or JSON) and
set the exit code: 0 the spec is valid, 2 it is not (every problem printed, one per line,
``file:line field.path: message``). ``schema`` (re)writes the published JSON Schema.

Must not: start, contact or write anything except the schema file ``schema`` is asked to
write; validation itself lives in ``nonstop.specfile`` and ``nonstop.core.spec``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nonstop.core.spec import ClusterSpec
from nonstop.specfile import SpecError, cluster_spec_schema_text, load_spec

DEFAULT_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "cluster-spec.schema.json"


def spec_summary(spec: ClusterSpec) -> dict[str, int]:
    return {
        "hosts": len(spec.hosts),
        "guests": sum(g.replicas for g in spec.guests),
        "guest_groups": len(spec.guests),
        "networks": len(spec.networks),
        "services": len(spec.services),
        "switches": len(spec.switches),
    }


def validate(
    file: Path = typer.Argument(..., help="Cluster spec (YAML) to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check a cluster spec and print every problem with file:line; exit 2 if it has any."""
    try:
        spec = load_spec(file)
    except SpecError as exc:
        if as_json:
            typer.echo(
                json.dumps(
                    {"file": str(file), "valid": False, "problems": [p.to_dict() for p in exc.problems]}, indent=2
                )
            )
        else:
            typer.echo(str(exc))
            count = len(exc.problems)
            typer.echo(f"{file}: {count} problem{'s' if count != 1 else ''}", err=True)
        raise typer.Exit(2) from None
    summary = spec_summary(spec)
    if as_json:
        typer.echo(
            json.dumps({"file": str(file), "valid": True, "cluster": spec.cluster, "summary": summary}, indent=2)
        )
        return
    typer.echo(
        f"{file}: valid (cluster {spec.cluster}: {summary['hosts']} hosts, {summary['guests']} guests in "
        f"{summary['guest_groups']} groups, {summary['networks']} networks, {summary['services']} services)"
    )


def schema(
    output: Path = typer.Option(DEFAULT_SCHEMA_PATH, "--output", "-o", help="Where to write the schema."),
    check: bool = typer.Option(False, "--check", help="Only compare; exit 1 if the file is out of date."),
    stdout: bool = typer.Option(False, "--stdout", help="Print the schema instead of writing it."),
) -> None:
    """Regenerate the cluster spec's JSON Schema (docs/cluster-spec.schema.json) for editors."""
    text = cluster_spec_schema_text()
    if stdout:
        typer.echo(text, nl=False)
        return
    if check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            typer.echo(f"{output}: out of date; run `nonstop schema`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{output}: up to date")
        return
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("schema")(schema)
