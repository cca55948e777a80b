"""Active health checks: one asyncio task per backend, HTTP GET or TCP connect.

Role: every ``interval`` (± ``jitter``, so checks of many backends do not align) probe a
backend within ``timeout`` and report pass/fail to the service, whose pool's health table
applies rise/fall. A backend removed from the pool ends its task; new backends get one.

Must not: decide health (the table in nonstop.core.lb.health does), or hold a connection
between checks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from nonstop.core.spec import HealthCheckSpec

if TYPE_CHECKING:
    from nonstop.lb.service import ServiceRuntime

log = logging.getLogger("nonstop.lb.health")


async def probe(host: str, port: int, check: HealthCheckSpec) -> bool:
    """One check. HTTP: ``GET path`` must answer ``expect_status``; TCP: connect must succeed."""
    writer = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(host, port)
            if check.type == "tcp":
                return True
            writer.write(
                f"GET {check.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: nonstop-lb-check\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
            parts = line.split(b" ", 2)
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1] == str(check.expect_status).encode()
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()


class HealthChecker:
    """Keeps one check task per backend of a service in step with the pool."""

    def __init__(self, svc: ServiceRuntime, rng: random.Random | None = None) -> None:
        self.svc = svc
        self.rng = rng or random.Random()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def sync(self) -> None:
        """Start tasks for new backends, stop those of removed ones (call after changes)."""
        if not self.svc.spec.health.enabled:
            self.stop()
            return
        names = set(self.svc.pool.backends)
        for name in [n for n in self.tasks if n not in names]:
            self.tasks.pop(name).cancel()
        for name in names - set(self.tasks):
            self.tasks[name] = self.svc.loop.create_task(self._run(name))

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    async def _run(self, name: str) -> None:
        svc = self.svc
        first = True
        while True:
            check = svc.spec.health
            spread = check.interval * check.jitter
            delay = check.interval + self.rng.uniform(-spread, spread)
            await asyncio.sleep(self.rng.uniform(0, min(delay, 0.2)) if first else max(0.01, delay))
            first = False
            backend = svc.pool.backends.get(name)
            if backend is None:
                self.tasks.pop(name, None)
                return
            ok = await probe(backend.host, backend.port, check)
            if svc.pool.backends.get(name) is backend:
                svc.on_check(name, ok)
