"""A backend whose host goes silent mid-flight: no RST, no FIN, no answer (the process is
SIGSTOPped: the kernel still completes handshakes and takes bytes, nothing comes back).
Unanswered idempotent requests on it must move to another backend as soon as the balancer
knows — health marks it down, or the operator (the cluster's controller) removes it — not
wait for the 30 s server timeout or the client's own timeout. A POST that was sent is
never resent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from .helpers import BackendProcess, Client, port_of, running, service

pytestmark = pytest.mark.timeout(60)

SERVER_TIMEOUT = 30.0


@contextlib.contextmanager
def silenced(backend: BackendProcess) -> Iterator[None]:
    assert backend.proc is not None
    os.kill(backend.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(backend.proc.pid, signal.SIGCONT)


async def warm(clients: list[Client]) -> None:
    """One answered request per client: keep-alive connections to both backends are pooled."""
    for c in clients:
        assert (await c.request("GET", "/warm")).status == 200


async def test_health_marking_a_silent_backend_down_moves_its_unanswered_gets(backends):
    a, b = backends("a", "b")
    # the helpers' checks: every 200 ms, 1 s probe timeout, down after 2 misses
    async with running(service("web", [a, b], server_timeout=f"{SERVER_TIMEOUT:g}s")) as lb:
        svc = lb.services["web"]
        clients = [Client(port_of(lb, "web")) for _ in range(4)]
        await warm(clients)
        loop = asyncio.get_running_loop()
        with silenced(b):
            started = loop.time()
            answers = await asyncio.wait_for(
                asyncio.gather(*(c.request("GET", f"/q{i}") for i, c in enumerate(clients))), SERVER_TIMEOUT / 2
            )
            took = loop.time() - started
        assert [r.status for r in answers] == [200] * 4
        assert all(r.body.startswith(b"a GET /q") for r in answers), answers
        assert svc.pool.get("b").health.serving is False
        assert svc.backend_stats["b"].retries_from >= 1  # round robin sent some to b first
        # moved when health gave up on b (2 misses of 1 s + intervals), far from the server timeout
        assert took < SERVER_TIMEOUT / 3, took
        for c in clients:
            c.close()


async def test_removing_a_silent_backend_moves_its_unanswered_gets_but_never_resends_a_post(backends):
    a, b = backends("a", "b")
    spec = service("web", [a, b], health={"enabled": False}, server_timeout=f"{SERVER_TIMEOUT:g}s")
    async with running(spec) as lb:
        svc = lb.services["web"]
        clients = [Client(port_of(lb, "web")) for _ in range(5)]
        await warm(clients[:3])  # round robin: a b a
        loop = asyncio.get_running_loop()
        with silenced(b):
            gets = [asyncio.create_task(c.request("GET", f"/q{i}")) for i, c in enumerate(clients[:4])]  # b a b a
            await asyncio.sleep(0.3)
            waiting = [u for u in svc.upstreams.busy if u.backend.name == "b"]
            assert len(waiting) == 2  # every other GET went to silent b
            post = asyncio.create_task(clients[4].request("POST", "/p", b"once"))  # the next pick: b
            await asyncio.sleep(0.3)
            assert len([u for u in svc.upstreams.busy if u.backend.name == "b"]) == 3
            removed_at = loop.time()
            lb.remove_server("web", "b")  # what the controller does when b's guest is gone
            answers = await asyncio.wait_for(asyncio.gather(*gets), 5)
            took = loop.time() - removed_at
            assert [r.status for r in answers] == [200] * 4
            assert all(r.body.startswith(b"a GET /q") for r in answers)
            assert took < 2.0, took
            # the POST stays on b (it was sent: resending could apply it twice) ...
            assert not post.done()
            assert [u.exchange.method for u in svc.upstreams.busy if u.backend.name == "b" and u.exchange] == [b"POST"]
        # ... and b, awake again, answers it: a removal lets in-flight work finish (drain)
        r = await asyncio.wait_for(post, 5)
        assert r.status == 200 and r.body.startswith(b"b POST /p")
        for c in clients:
            c.close()
