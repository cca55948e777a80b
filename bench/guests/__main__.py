"""``python -m bench.guests``: the guest benchmarks in one run → bench/results/guests.{json,md}.

Role: run the process-guest figures (``process_bench``) and, when the VM engineer's module is
present, ``bench.guests.vm_bench.run_vm_benchmarks()`` (VM boot to first 200 under TCG, vCPU and
memory hot-add, live migration total time and downtime, idle VM memory); write one JSON and one
markdown table. ``--process-only`` skips the VMs (they take minutes under TCG); ``--rounds N``.

Must not: hide a failed part: a part that raises is recorded as such in the report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from pathlib import Path
from typing import Any

from bench.guests import process_bench

RESULTS = Path(__file__).resolve().parent.parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guests")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--process-only", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"started_at": time.time()}
    markdown = ["# Guest benchmarks", ""]
    try:
        report["process"] = process_bench.run_process_benchmarks(args.rounds)
        markdown.append(process_bench.to_markdown(report["process"]))
    except Exception:
        report["process"] = {"error": traceback.format_exc()}
        markdown.append(f"## Process guests\n\nFAILED:\n\n```\n{report['process']['error']}\n```\n")
    if not args.process_only:
        try:
            vm = importlib.import_module("bench.guests.vm_bench")
        except ModuleNotFoundError:
            vm = None
            report["vm"] = {"skipped": "bench.guests.vm_bench is not present"}
        if vm is not None:
            try:
                report["vm"] = vm.run_vm_benchmarks(args.rounds)
                if "skipped" in report["vm"]:
                    markdown.append(f"## VMs\n\nskipped: {report['vm']['skipped']}\n")
                else:
                    markdown.append(vm.to_markdown(report["vm"]).replace("# VM benchmark", "## VMs", 1))
            except Exception:
                report["vm"] = {"error": traceback.format_exc()}
                markdown.append(f"## VMs\n\nFAILED:\n\n```\n{report['vm']['error']}\n```\n")
    report["finished_at"] = time.time()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guests.json").write_text(json.dumps(report, indent=2))
    text = "\n".join(markdown)
    (RESULTS / "guests.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
