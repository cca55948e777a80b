"""The ``nonstop`` command line: one typer app, verbs contributed by small modules.

Role: build the top-level typer app and let each feature module add its verbs through
``register(app)``, so features land in files of their own. Exit codes (documented in
docs/cli.md): 0 success, 1 the operation failed, 2 bad input (spec or arguments),
3 the cluster is not in a state that allows the operation.

Must not: hold feature logic; a verb parses arguments, calls a shell module, prints.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="nonstop",
    help="nonstop: a self-healing virtualization cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module exposes register(app: typer.Typer) -> None.
VERB_MODULES = (
    "nonstop.cli.spec_verbs",
    "nonstop.cli.plan_verbs",
    "nonstop.cli.store_verbs",
    "nonstop.cli.lb_verbs",
    "nonstop.cli.lab_verbs",
    "nonstop.cli.guest_verbs",
    "nonstop.cli.cluster_verbs",
    "nonstop.cli.api_verbs",
    "nonstop.cli.patch_verbs",
    "nonstop.cli.up_verbs",
)


def _register_all() -> None:
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that feature has not landed in this tree
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
