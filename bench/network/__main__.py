"""One command for the network benchmark: ``.venv/bin/python -m bench.network`` (root).

Runs the lab fabric / host networking paths (bench/network/fabric_bench.py) and, when
present, the NIC teaming figures (bench/network/team_bench.py: team vs direct, failover
gap, balance-xor aggregate), then writes bench/results/network.json and network.md.
``--no-team`` skips the teaming part.

Must not: leave namespaces or processes behind (each part tears down what it built).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.network.fabric_bench import markdown as fabric_markdown
from bench.network.fabric_bench import run_fabric_benchmarks

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with_team = "--no-team" not in args and importlib.util.find_spec("bench.network.team_bench") is not None
    results: dict[str, Any] = {"fabric": run_fabric_benchmarks(_log, with_teams=with_team)}
    if with_team:
        from bench.network import team_bench

        results["team"] = team_bench.run_team_benchmarks(_log)
    results["meta"] = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": f"2-core machine, load average {os.getloadavg()[0]:.1f} at the end",
    }
    lines = [
        "# Network benchmark",
        "",
        f"Run at {results['meta']['at']}; {results['meta']['note']}. Command: `.venv/bin/python -m bench.network`.",
        "",
        "## Lab fabric and host virtual networking",
        "",
        *fabric_markdown(results["fabric"]),
        "",
    ]
    if "team" in results:
        from bench.network import team_bench

        team_md = team_bench.markdown(results["team"]).splitlines()
        lines += ["## NIC teaming", "", *[line for line in team_md if not line.startswith("# ")]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "network.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "network.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
