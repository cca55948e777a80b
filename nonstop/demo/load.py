"""Constant HTTP load through a balancer, recording every request: a small asyncio client.

Role: ``http_get`` (one GET on a fresh connection: status and latency; status 0 = connection
error or timeout) and ``LoadRun`` (``rate`` requests per second, bounded by ``duration`` and
``max_requests``, each recorded as ``Sample(at, status, latency)``) for the demo and the bench.

Must not: retry (a failure is recorded as one), or talk to anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    at: float          # wall clock when sent
    status: int        # HTTP status, 0 = connection error / timeout
    latency: float     # seconds


async def http_get(host: str, port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, float]:
    """One ``GET path`` on a new connection; (status, seconds). Status 0 when it failed."""
    if not host.startswith("127."):
        raise ValueError("the demo load only targets 127.0.0.0/8")
    start = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readline()
            parts = head.split()
            status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
            await reader.read()  # the whole body: a request counts when it completed
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        status = 0
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return status, time.perf_counter() - start


@dataclass
class LoadRun:
    port: int
    rate: float = 50.0
    duration: float = 60.0
    max_requests: int = 20000
    timeout: float = 2.0
    host: str = "127.0.0.1"
    path: str = "/"
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def _one(self) -> None:
        at = time.time()
        status, latency = await http_get(self.host, self.port, self.path, self.timeout)
        self.samples.append(Sample(at, status, latency))

    async def run(self) -> list[Sample]:
        """Send at ``rate``/s until stopped, ``duration`` elapsed or ``max_requests`` sent."""
        interval = 1.0 / self.rate
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        sent = 0
        while not self._stop.is_set() and sent < self.max_requests and time.monotonic() - start < self.duration:
            task = asyncio.create_task(self._one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            next_at = start + sent * interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout + 1)
        return sorted(self.samples, key=lambda s: s.at)

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]
