"""The readiness gate with real sockets on 127.0.0.1: a replica joins once its port accepts,
the gate wakes the controller the moment that happens, and a moved replica is checked again."""

from __future__ import annotations

import asyncio
import socket

from nonstop.controller.readiness import ReadinessGate
from nonstop.core.controller.backends import Backend, GuestFacts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _facts(name: str, epoch: int) -> dict[str, GuestFacts]:
    return {name: GuestFacts(name=name, group="api", host="h1", epoch=epoch, address="127.0.0.1")}


def test_replica_joins_when_its_port_accepts_and_the_gate_wakes_the_loop() -> None:
    async def go() -> None:
        port = _free_port()
        woken = asyncio.Event()
        gate = ReadinessGate(woken.set, timeout=0.2, every=0.02)
        backend = Backend("api-0", f"127.0.0.1:{port}")
        static = Backend("static", "127.0.0.1:9")
        assert await gate.filter((backend, static), _facts("api-0", 1)) == (static,)
        assert ("api-0", 1) in gate.probes
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        try:
            await asyncio.wait_for(woken.wait(), 5)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert await gate.filter((backend, static), _facts("api-0", 1)) == (backend, static)
            assert loop.time() - t0 < 0.1, "a ready replica is not probed again"
            # moved: a new epoch is checked again (and passes at once: the port accepts)
            assert await gate.filter((backend,), _facts("api-0", 2)) == (backend,)
        finally:
            server.close()
            await server.wait_closed()
            gate.close()

    asyncio.run(go())


def test_probe_of_an_older_epoch_is_cancelled() -> None:
    async def go() -> None:
        port = _free_port()
        gate = ReadinessGate(lambda: None, timeout=0.1, every=0.02)
        backend = Backend("api-0", f"127.0.0.1:{port}")
        assert await gate.filter((backend,), _facts("api-0", 1)) == ()
        old = gate.probes[("api-0", 1)]
        assert await gate.filter((backend,), _facts("api-0", 2)) == ()
        assert ("api-0", 1) not in gate.probes and ("api-0", 2) in gate.probes
        await asyncio.sleep(0)
        assert old.cancelled() or old.done()
        gate.close()

    asyncio.run(go())
