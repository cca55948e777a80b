"""Where a running ``nonstop up`` is: its record file and pid, and the cleanup of a crashed run.

Role: ``/run/nonstop/<cluster>/up.json`` = ``{pid, cluster, store, spec_file, etcd_pid, drivers,
started_at}`` (mode 0600) is written once ``up`` owns the cluster and removed when it ends;
``nonstop down`` signals that pid. ``clean_leftovers`` removes what a run that died without
cleaning up left behind (lab processes, namespaces, cgroups, run files, its private etcd).

Must not: start anything; signal any process other than the recorded ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from nonstop.api.server import RUN_ROOT, remove_run_files


def record_path(cluster: str) -> Path:
    return RUN_ROOT / cluster / "up.json"


def write_record(cluster: str, record: dict[str, Any]) -> None:
    path = record_path(cluster)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def read_record(cluster: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(record_path(cluster).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def remove_record(cluster: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(cluster).unlink()


def remove_run_dir(cluster: str) -> None:
    """The cluster's run directory, when nothing is left in it."""
    with contextlib.suppress(OSError):
        (RUN_ROOT / cluster).rmdir()


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def running(cluster: str) -> dict[str, Any] | None:
    """The record of a live ``up`` of ``cluster``, else None."""
    rec = read_record(cluster)
    return rec if rec is not None and alive(rec.get("pid")) else None


def running_clusters() -> list[str]:
    if not RUN_ROOT.is_dir():
        return []
    return sorted(p.parent.name for p in RUN_ROOT.glob("*/up.json") if running(p.parent.name))


def signal_and_wait(pid: int, timeout: float) -> bool:
    """SIGTERM ``pid`` (a recorded ``up``) and wait until it exits; True when it did."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def clean_leftovers(cluster: str, spec: Any = None) -> list[str]:
    """Remove what a dead ``up`` (or ``cluster up``) of ``cluster`` left; what was removed."""
    from nonstop.lab import fabric, state
    from nonstop.lab.cluster import LabCluster

    removed: list[str] = []
    rec = read_record(cluster)
    if rec is not None and rec.get("etcd_pid") and alive(rec["etcd_pid"]):
        from nonstop.up.stores import stop_etcd

        stop_etcd(int(rec["etcd_pid"]), rec.get("etcd_dir"))
        removed.append(f"etcd pid {rec['etcd_pid']}")
    if state.load(cluster) is not None:
        with contextlib.suppress(LookupError):
            spec = fabric.load_running_spec(cluster)
    if spec is not None:  # idempotent: works from the saved state, the spec and the name prefix
        gone = LabCluster(spec, "sqlite:///dev/null").stop()
        removed += [f"{kind}: {', '.join(names)}" for kind, names in gone.items() if names]
    remove_run_files(cluster)
    remove_record(cluster)
    from nonstop.up.stores import remove_default

    remove_default(rec.get("store", "") if rec else "", cluster)
    remove_run_dir(cluster)
    return removed
