"""The kernel L4 data plane: keep one nftables table in step with the nft-mode services.

Role: render (``nonstop.core.lb.nft_render``) and load the balancer's own table with ONE
``nft -f -`` transaction (``nonstop.net.nft.apply``, in the balancer's namespace) whenever
a backend of an nft-mode service changes health, admin state or weight (changes within a
few milliseconds are coalesced), and delete the table on shutdown. Loading a nat table
turns on connection tracking for all traffic, so the table exists only while an nft-mode
service runs. A refused or timed-out transaction is logged and changes nothing (nft
applies all of a script or none of it); the next change renders and tries again.

Must not: touch any table but its own (the name must start with ``nonstop_``), or run
``nft`` for a table it did not create.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nonstop.core.lb.nft_render import NftBackend, NftService, render_delete, render_table
from nonstop.lb.config import parse_address
from nonstop.net import nft

if TYPE_CHECKING:
    from nonstop.lb.service import ServiceRuntime

log = logging.getLogger("nonstop.lb.nft")


def describe(services: Sequence[ServiceRuntime], now: float) -> list[NftService]:
    out = []
    for svc in services:
        host, port = parse_address(svc.spec.listen)
        backends = tuple(NftBackend(b.host, b.port, b.base_weight) for b in svc.pool.serving(now))
        out.append(NftService(svc.spec.name, host, port, svc.spec.algorithm.value, backends))
    return out


class NftPlane:
    def __init__(self, table: str, loop: asyncio.AbstractEventLoop) -> None:
        self.table = table
        self.loop = loop
        self.services: list[ServiceRuntime] = []
        self.loaded = False
        self.last_script = ""
        self.applies = 0
        self._pending: asyncio.Handle | None = None

    def attach(self, svc: ServiceRuntime) -> None:
        self.services.append(svc)
        svc.listeners.append(lambda event: self.schedule())

    def detach(self, svc: ServiceRuntime) -> None:
        if svc in self.services:
            self.services.remove(svc)
        self.schedule()

    def schedule(self) -> None:
        if self._pending is None:
            self._pending = self.loop.call_later(0.005, self._apply_soon)

    def _apply_soon(self) -> None:
        self._pending = None
        try:
            self.apply()
        except (nft.NftError, OSError, subprocess.TimeoutExpired) as exc:
            log.error("nft table %s not updated: %s", self.table, exc)

    def apply(self) -> None:
        if not self.services:
            self.remove()
            return
        script = render_table(self.table, describe(self.services, self.loop.time()))
        if script == self.last_script and self.loaded:
            return
        nft.apply(None, script)
        self.loaded = True
        self.last_script = script
        self.applies += 1
        log.info("nft table %s loaded (%d services)", self.table, len(self.services))

    def remove(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.loaded:
            nft.apply(None, render_delete(self.table))
            self.loaded = False
            self.last_script = ""
