"""The built-in workload server that process guests run by default.

Role: a small asyncio HTTP/1.1 server (GET only) that a health checker, a load balancer and a
person can talk to:
- ``/health`` → 200 ``ok``
- ``/`` (or ``/identity``) → JSON naming the guest, its host and cluster, its boot id (random per
  process start unless the driver passes ``NONSTOP_BOOT_ID``), and the vCPU quota and memory limit
  as this process sees them in its own cgroup
- ``/burn?cpu=N&seconds=S`` → fork N busy-looping children for S seconds (bounded: N ≤ 16, S ≤ 300)
- ``/hold?mb=N&seconds=S`` → allocate and touch N MiB in this process for S seconds (bounded:
  N ≤ 65536, S ≤ 3600); exceeding the guest's memory limit gets this process OOM-killed, which is
  what an overcommit demo wants to show.
SIGTERM stops it cleanly (exit 0).

Must not: depend on anything but the standard library (it starts in every guest, fast), or serve
anything beyond these knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

MAX_BURN_CPUS = 16
MAX_BURN_SECONDS = 300.0
MAX_HOLD_MB = 65536
MAX_HOLD_SECONDS = 3600.0
PAGE = 4096

BOOT_ID = os.environ.get("NONSTOP_BOOT_ID") or uuid.uuid4().hex
STARTED_AT = time.time()
_held: list[bytearray] = []


def cgroup_limits() -> dict[str, object]:
    """vCPU quota and memory limit of the cgroup this process is in (v1 or v2)."""
    vcpus: float | None = None
    memory: int | None = None
    groups = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            groups[name] = path
    root = Path("/sys/fs/cgroup")
    with contextlib.suppress(OSError, ValueError, KeyError):
        cpu = root / "cpu" / groups["cpu"].lstrip("/")
        quota = int((cpu / "cpu.cfs_quota_us").read_text())
        if quota > 0:
            vcpus = quota / int((cpu / "cpu.cfs_period_us").read_text())
    with contextlib.suppress(OSError, ValueError, KeyError):
        raw = int((root / "memory" / groups["memory"].lstrip("/") / "memory.limit_in_bytes").read_text())
        memory = raw if raw < 2**62 else None
    if vcpus is None and memory is None and "" in groups:
        unified = root / groups[""].lstrip("/")
        with contextlib.suppress(OSError, ValueError):
            q, period = (unified / "cpu.max").read_text().split()
            vcpus = None if q == "max" else int(q) / int(period)
        with contextlib.suppress(OSError, ValueError):
            raw_text = (unified / "memory.max").read_text().strip()
            memory = None if raw_text == "max" else int(raw_text)
    return {"vcpus": vcpus, "memory_limit": memory, "cgroup": groups.get("memory") or groups.get("")}


def identity() -> dict[str, object]:
    return {
        "guest": os.environ.get("NONSTOP_GUEST", socket.gethostname()),
        "host": os.environ.get("NONSTOP_HOST"),
        "cluster": os.environ.get("NONSTOP_CLUSTER"),
        "boot_id": BOOT_ID,
        "pid": os.getpid(),
        "uptime": round(time.time() - STARTED_AT, 3),
        "held_mb": sum(len(b) for b in _held) // 2**20,
        **cgroup_limits(),
    }


def _burn(cpus: int, seconds: float) -> list[int]:
    pids = []
    for _ in range(cpus):
        pid = os.fork()
        if pid == 0:  # child: spin, then leave without running the parent's cleanup
            os.closerange(3, 65536)  # drop inherited sockets, or clients would wait for our exit
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass
            os._exit(0)
        pids.append(pid)
    return pids


async def _reap(pids: list[int], seconds: float) -> None:
    await asyncio.sleep(seconds)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                await asyncio.sleep(0.05)


async def _hold(mb: int, seconds: float) -> None:
    block = bytearray(mb * 2**20)
    for offset in range(0, len(block), PAGE):  # touch every page so it is really resident
        block[offset] = 1
    _held.append(block)
    try:
        await asyncio.sleep(seconds)
    finally:
        _held.remove(block)


def _number(query: dict[str, list[str]], key: str, default: float, limit: float) -> float:
    value = float(query.get(key, [default])[0])
    if not 0 <= value <= limit:
        raise ValueError(f"{key} must be between 0 and {limit:g}")
    return value


async def route(target: str) -> tuple[int, object]:
    url = urlsplit(target)
    query = parse_qs(url.query)
    try:
        if url.path == "/health":
            return 200, "ok"
        if url.path in ("/", "/identity"):
            return 200, identity()
        if url.path == "/burn":
            cpus = int(_number(query, "cpu", 1, MAX_BURN_CPUS))
            seconds = _number(query, "seconds", 10, MAX_BURN_SECONDS)
            pids = _burn(cpus, seconds)
            asyncio.get_running_loop().create_task(_reap(pids, seconds))
            return 200, {"burning": cpus, "seconds": seconds}
        if url.path == "/hold":
            mb = int(_number(query, "mb", 64, MAX_HOLD_MB))
            seconds = _number(query, "seconds", 30, MAX_HOLD_SECONDS)
            task = asyncio.get_running_loop().create_task(_hold(mb, seconds))
            await asyncio.sleep(0)  # let the allocation run before answering
            return 200, {"holding_mb": mb, "seconds": seconds, "done": task.done()}
    except ValueError as exc:
        return 400, {"error": str(exc)}
    return 404, {"error": f"no such page {url.path}"}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            keep_alive = not any(h.lower().startswith("connection:") and "close" in h.lower() for h in lines[1:])
            body: object
            if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                status, body = 405, {"error": "only GET"}
                keep_alive = False
            else:
                status, body = await route(parts[1])
            payload = (body if isinstance(body, str) else json.dumps(body)).encode() + b"\n"
            ctype = "text/plain" if isinstance(body, str) else "application/json"
            writer.write(
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n".encode()
                + (payload if parts[:1] != ["HEAD"] else b"")
            )
            await writer.drain()
            if not keep_alive:
                return
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nonstop-workload", description="nonstop's built-in workload server")
    parser.add_argument("--host", default=os.environ.get("NONSTOP_LISTEN", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("NONSTOP_PORT", "80")))
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
