"""The readiness gate: a replica joins its service's balancer once its port accepts a connection.

Role: the agent reports a process guest ``running`` when it has started it, before the workload
listens; a backend added then would refuse connections for a moment. ``ReadinessGate.filter``
keeps such replicas out until a TCP connect to their address succeeds — once per (guest,
epoch), so a moved guest is checked again at its new place. Replicas are probed at once in the
pass that first wants them (a restarted controller finds its replicas listening and keeps them
in the balancer); one not listening yet gets a probe task of its own that retries every
``every`` seconds and calls ``wake`` the moment the port accepts, so readiness does not wait for
the controller's next tick. The connect is the replica's first passing check: the balancer adds
it serving at once (no ``rise`` to climb), and its own checks take over from there.

Must not: decide which replicas should serve (the core does) or talk to a balancer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from nonstop.core.controller.backends import Backend, GuestFacts


async def accepts(address: str, timeout: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (TimeoutError, OSError, ValueError):
        return False
    writer.close()
    return True


class ReadinessGate:
    def __init__(self, wake: Callable[[], None], *, timeout: float = 0.3, every: float = 0.05,
                 give_up_after: float = 60.0) -> None:
        self.wake = wake
        self.timeout, self.every, self.give_up_after = timeout, every, give_up_after
        self.ready: set[tuple[str, int]] = set()
        """(guest, epoch) whose port accepted a connection."""
        self.probes: dict[tuple[str, int], asyncio.Task[None]] = {}

    async def filter(self, want: tuple[Backend, ...], facts: Mapping[str, GuestFacts]) -> tuple[Backend, ...]:
        """``want`` without the replicas that are not ready yet (static servers pass as they are)."""
        out, probes = [], {}
        for b in want:
            f = facts.get(b.name)
            if f is None or (b.name, f.epoch) in self.ready:
                out.append(b)
            elif (b.name, f.epoch) not in self.probes:
                probes[b] = (b.name, f.epoch)
        if probes:
            results = await asyncio.gather(*(accepts(b.address, self.timeout) for b in probes))
            for (b, token), ok in zip(probes.items(), results, strict=True):
                if ok:
                    self.ready.add(token)
                    out.append(b)
                else:
                    self.probes[token] = asyncio.create_task(self._probe(token, b.address),
                                                             name=f"ready-{b.name}-{token[1]}")
        # A probe of an older epoch of one of these replicas (it moved again) has no purpose.
        current = {b.name: facts[b.name].epoch for b in want if b.name in facts}
        for token in [t for t in self.probes if t[0] in current and t[1] != current[t[0]]]:
            self.probes.pop(token).cancel()
        return tuple(sorted(out, key=lambda b: b.name))

    async def _probe(self, token: tuple[str, int], address: str) -> None:
        deadline = time.monotonic() + self.give_up_after
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                if await accepts(address, self.timeout):
                    self.ready.add(token)
                    self.wake()
                    return
                await asyncio.sleep(max(0.0, self.every - (time.monotonic() - started)))
        finally:
            if self.probes.get(token) is asyncio.current_task():
                self.probes.pop(token, None)

    def close(self) -> None:
        for task in self.probes.values():
            task.cancel()
        self.probes.clear()
