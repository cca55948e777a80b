"""What a cluster can leave behind on this machine: namespaces, root-namespace links, nftables
tables, processes, cgroups, run and state files — each found by the cluster's name, independently
of the code under test."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from pyroute2 import IPRoute, netns


def namespaces(cluster: str) -> list[str]:
    return [n for n in netns.listnetns() if n.startswith(f"nonstop-{cluster}")]


def root_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def nft_tables(cluster: str) -> list[str]:
    res = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True, check=False)
    tables = [item["table"]["name"] for item in json.loads(res.stdout or "{}").get("nftables", []) if "table" in item]
    return [t for t in tables if cluster in t]


def processes(cluster: str) -> list[str]:
    """Processes whose command line names the cluster the way nonstop's processes do."""
    marks = (f"--cluster {cluster} ", f"--cluster {cluster}\0", f"nonstop-{cluster}-",
             f"/run/nonstop/{cluster}/", f"/var/lib/nonstop/{cluster}.db")
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            raw = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        cmd = raw.replace("\0", " ")
        if any(m in raw or m in cmd for m in marks) and "pytest" not in cmd:
            found.append(f"{entry.name}: {cmd[:120]}")
    return found


def cgroups(cluster: str) -> list[str]:
    found = []
    for controller in ("cpu", "memory", "pids", "cpuset", "unified"):
        root = Path("/sys/fs/cgroup") / controller
        if not root.is_dir():
            continue
        for dirpath, dirnames, _ in os.walk(root):
            if dirpath.count("/") - str(root).count("/") > 5:
                dirnames[:] = []
                continue
            found += [os.path.join(dirpath, d) for d in dirnames if f"nonstop.{cluster}" in d]
    return found


def files(cluster: str) -> list[str]:
    paths = [Path("/run/nonstop") / cluster, Path("/var/lib/nonstop") / f"{cluster}.db",
             Path("/var/lib/nonstop/disks") / cluster]
    return [str(p) for p in paths if p.exists()]


def everything(cluster: str) -> dict[str, list[str]]:
    return {"namespaces": namespaces(cluster), "nft": nft_tables(cluster), "processes": processes(cluster),
            "cgroups": cgroups(cluster), "files": files(cluster)}
