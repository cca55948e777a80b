"""Processes of the load-balancer benchmark: nginx backends, HAProxy, nonstop lb, wrk.

Role: write each program's config into a private temp dir, start it pinned to a core with
taskset, stop it by PID (never by name), read its CPU time from /proc/<pid>/stat, and run
wrk and parse its output. Everything listens on 127.0.0.1 only (the nft VIP is a
127/8 address), and every nft table is ``nonstop_lb_bench_<token>``, deleted on stop.

Must not: touch processes, files or nft tables it did not create.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 60.0) -> None:
    """Generous: on a loaded machine a Python balancer's imports alone take seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not open within {timeout}s")


def listeners(port: int) -> int:
    """Listening IPv4 TCP sockets on ``port`` (SO_REUSEPORT workers: one each)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (and their reaped children), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in out]


class Proc:
    """A started program; ``pids`` are measured for CPU, ``stop`` ends them by PID."""

    def __init__(self, name: str, argv: list[str], core: str | None, cwd: Path | None = None) -> None:
        self.name = name
        prefix = ["taskset", "-c", core] if core is not None else []
        self.popen = subprocess.Popen(
            prefix + argv, cwd=cwd or ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    @property
    def pids(self) -> list[int]:
        return [self.popen.pid, *children(self.popen.pid)]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            for pid in self.pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def listening(proc: Proc, host: str, port: int) -> Proc:
    """``proc`` once it listens; stopped (not leaked) when it does not in time."""
    try:
        wait_port(host, port)
    except BaseException:
        proc.stop()
        raise
    return proc


def nginx(tmp: Path, port: int, core: str) -> Proc:
    d = tmp / f"nginx-{port}"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ return 200 "backend {port}\\n"; }}
    }}
}}
"""
    )
    return listening(Proc(f"nginx:{port}", ["/usr/sbin/nginx", "-p", str(d), "-c", str(conf)], core), "127.0.0.1", port)


def haproxy(
    tmp: Path, mode: str, port: int, backends: list[int], core: str, *, defaults_check: bool = True, threads: int = 1
) -> Proc:
    """HAProxy 2.6, one thread (or ``threads``), keep-alive, roundrobin; checks with
    HAProxy's defaults (inter 2s rise 2 fall 3) plus retries 3 and option redispatch."""
    servers = "\n".join(
        f"    server s{i} 127.0.0.1:{p}{' check' if defaults_check else ''}" for i, p in enumerate(backends)
    )
    option = "    option http-keep-alive\n" if mode == "http" else ""
    conf = tmp / f"haproxy-{mode}-{port}.cfg"
    conf.write_text(
        f"""global
    nbthread {threads}
    maxconn 4000
defaults
    mode {mode}
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
{option}frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
{servers}
"""
    )
    return listening(Proc(f"haproxy-{mode}", ["/usr/sbin/haproxy", "-db", "-f", str(conf)], core), "127.0.0.1", port)


def nonstop_lb(
    tmp: Path, mode: str, listen: str, backends: list[int], core: str | None, *, nft_table: str = "", workers: int = 1
) -> Proc:
    host, _, port = listen.rpartition(":")
    service: dict[str, Any] = {
        "name": "bench",
        "listen": listen,
        "mode": mode,
        "algorithm": "round-robin",
        "servers": [{"name": f"s{i}", "address": f"127.0.0.1:{p}"} for i, p in enumerate(backends)],
        "health": {"type": "http" if mode == "http" else "tcp", "path": "/", "interval": "1s", "rise": 2, "fall": 2},
    }
    conf = tmp / f"nonstop-{mode}-{port}.yaml"
    conf.write_text(yaml.safe_dump({"services": [service]}))
    argv = [sys.executable, "-m", "nonstop.cli.main", "lb", "--config", str(conf), "--log-level", "warning"]
    if nft_table:
        argv += ["--nft-table", nft_table]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = Proc(f"nonstop-{mode}", argv, core)
    try:
        if mode == "nft":
            deadline = time.monotonic() + 60
            while subprocess.run(["nft", "list", "table", "ip", nft_table], capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("nft table did not appear")
                time.sleep(0.05)
        wait_port(host, int(port))
    except BaseException:
        proc.stop()  # the caller never gets it: stop it here (a run died once and left one behind)
        raise
    return proc


_LAT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def _seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def wrk(url: str, seconds: float, *, connections: int = 50, core: str = "0") -> dict[str, Any]:
    """Run wrk pinned to ``core``; returns req/s, p50/p99 (seconds), errors and the raw text."""
    out = subprocess.run(
        ["taskset", "-c", core, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    lat = {m.group(1): _seconds(m.group(2), m.group(3)) for m in _LAT.finditer(out)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "p50": lat.get("50"),
        "p99": lat.get("99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors,
        "raw": out,
    }
