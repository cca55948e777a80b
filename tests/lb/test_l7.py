"""The L7 proxy against real backend processes: proxying, failover, retries, drain, backup."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from nonstop.core.lb.health import AdminState

from .helpers import Client, load, port_of, raw_exchange, running, service

pytestmark = pytest.mark.timeout(60)


async def test_proxies_get_post_chunked_and_forwarding_headers(backends):
    a, b = backends("a", "b")
    async with running(service("web", [a, b])) as lb:
        client = Client(port_of(lb, "web"))
        names = Counter()
        for _ in range(6):
            r = await client.request("GET", "/x")
            assert r.status == 200
            names[r.body.split(b" ")[0]] += 1
        assert names == {b"a": 3, b"b": 3}
        r = await client.request("POST", "/echo", b"hello body")
        assert r.status == 200 and r.body.endswith(b"hello body")
        r = await client.request("GET", "/chunked")
        assert r.status == 200 and r.body.endswith(b"GET /chunked\n")
        assert "connection" not in r.headers  # backend's hop-by-hop header removed
        r = await client.request("GET", "/headers", headers="Connection: X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 10.9.9.9\r\n")
        assert b"X-Forwarded-For: 10.9.9.9, 127.0.0.1" in r.body
        assert b"X-Forwarded-Proto: http" in r.body and b"Via: 1.1 nonstop" in r.body
        assert b"X-Secret" not in r.body  # named by Connection: hop-by-hop
        r = await client.request("GET", "/headers", headers="Connection: keep-alive\r\nX-Forwarded-For: 10.1.1.1\r\nVia: 1.0 evil\r\nX-Keep: 1\r\n")
        lines = r.body.split(b"\n")
        assert b"X-Forwarded-For: 10.1.1.1, 127.0.0.1" in lines and b"X-Keep: 1" in lines and b"Host: test" in lines
        assert b"Via: 1.1 nonstop" in lines and not any(b"evil" in x or x.startswith(b"Connection") for x in lines)
        r = await client.request("GET", "/headers")
        assert b"X-Forwarded-For: 127.0.0.1" in r.body.split(b"\n")
        # a chunked request body is streamed through re-chunked
        raw = await raw_exchange(
            port_of(lb, "web"),
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"hello world")
        # HEAD gets the head only, and the connection stays usable
        r1 = await raw_exchange(port_of(lb, "web"), b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert r1.count(b"HTTP/1.1 200") == 2 and r1.endswith(b"GET /after\n")
        client.close()


async def test_killing_a_backend_under_load_fails_no_get(backends):
    a, b, c = backends("a", "b", "c")
    async with running(service("web", [a, b, c], retries=3)) as lb:
        port = port_of(lb, "web")
        task = asyncio.create_task(load(port, clients=12, seconds=2.5))
        await asyncio.sleep(0.8)
        b.kill()
        result = await task
        assert result["failed"] == 0, result["errors"][:5]
        assert result["ok"] > 300
        assert lb.services["web"].pool.get("b").health.serving is False
        # after the kill, b got nothing more while a and c carried on
        assert result["by_backend"].get("a", 0) > 100 and result["by_backend"].get("c", 0) > 100


async def test_connect_failures_are_retried_elsewhere_and_eject_the_backend(backends):
    (a,) = backends("a")
    dead = {"name": "dead", "address": "127.0.0.1:1"}
    spec = service("web", [dead, a], health={"enabled": False}, outlier_errors=2)
    async with running(spec) as lb:
        client = Client(port_of(lb, "web"))
        statuses = [(await client.request("GET", f"/{i}")).status for i in range(10)]
        assert statuses == [200] * 10
        svc = lb.services["web"]
        assert svc.stats.retries >= 2
        assert svc.pool.get("dead").health.state.value == "ejected"
        # a POST whose connect failed was never sent: retried too
        assert (await client.request("POST", "/p", b"x")).status == 200
        client.close()


class ResetServer:
    """A backend that reads a request and closes without answering."""

    async def start(self) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1000)
            writer.transport.abort()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]


async def test_reset_before_response_retries_gets_but_not_posts(backends):
    (a,) = backends("a")
    port = await ResetServer().start()
    reset = {"name": "reset", "address": f"127.0.0.1:{port}"}
    spec = service("web", [reset, a], health={"enabled": False}, algorithm="least-recently-used", outlier_errors=0)
    async with running(spec) as lb:
        client = Client(port_of(lb, "web"))
        gets = [await client.request("GET", f"/{i}") for i in range(4)]
        assert [r.status for r in gets] == [200] * 4 and all(r.body.startswith(b"a ") for r in gets)
        posts = Counter()
        for _ in range(4):
            posts[(await client.request("POST", "/p", b"data")).status] += 1
        # least-recently-used alternates: the POSTs that went to "reset" were sent, so not retried
        assert posts[502] >= 1 and posts[200] >= 1
        client.close()


async def test_drain_lets_in_flight_finish_and_sends_nothing_new(backends):
    a, b = backends("a", "b")
    async with running(service("web", [a, b], algorithm="least-recently-used")) as lb:
        port = port_of(lb, "web")
        slow = asyncio.create_task(Client(port).request("GET", "/slow?ms=600"))  # goes to a
        await asyncio.sleep(0.15)
        lb.set_state("web", "a", AdminState.DRAIN)
        client = Client(port)
        later = [await client.request("GET", "/n") for _ in range(5)]
        assert all(r.body.startswith(b"b ") for r in later)
        r = await slow
        assert r.status == 200 and r.body.startswith(b"a GET /slow")
        lb.set_state("web", "a", AdminState.READY)
        back = {(await client.request("GET", "/n")).body[:1] for _ in range(4)}
        assert back == {b"a", b"b"}
        client.close()


async def test_maintenance_moves_an_unanswered_get_to_another_backend(backends):
    a, b = backends("a", "b")
    async with running(service("web", [a, b], algorithm="least-recently-used")) as lb:
        port = port_of(lb, "web")
        slow = asyncio.create_task(Client(port).request("GET", "/slow?ms=800"))  # to a
        await asyncio.sleep(0.15)
        lb.set_state("web", "a", AdminState.MAINT)
        r = await slow
        assert r.status == 200 and r.body.startswith(b"b GET /slow")


async def test_backup_serves_only_when_every_primary_is_down(backends):
    a, spare = backends("a", "spare")
    servers = [{"name": "a", "address": a.address}, {"name": "spare", "address": spare.address, "backup": True}]
    async with running(service("web", servers)) as lb:
        client = Client(port_of(lb, "web"))
        assert {(await client.request()).body[:1] for _ in range(4)} == {b"a"}
        a.kill()
        bodies = [await client.request() for _ in range(4)]
        assert all(r.status == 200 and r.body.startswith(b"spare") for r in bodies)
        client.close()


async def test_upstream_timeout_is_504_and_no_backend_is_503(backends):
    (a,) = backends("a")
    async with running(service("web", [a], server_timeout="300ms", health={"enabled": False})) as lb:
        client = Client(port_of(lb, "web"))
        r = await client.request("GET", "/slow?ms=1500")
        assert r.status == 504 and b"did not answer" in r.body
        lb.set_state("web", "a", AdminState.MAINT)
        r = await Client(port_of(lb, "web")).request("GET", "/")
        assert r.status == 503 and b"no backend" in r.body


async def test_slow_start_ramps_a_recovered_backend(backends):
    a, b = backends("a", "b")
    async with running(service("web", [a], slow_start="2s", algorithm="weighted-round-robin")) as lb:
        lb.add_server("web", type(lb.services["web"].spec.servers[0])(name="b", address=b.address))
        client = Client(port_of(lb, "web"))
        early = Counter([(await client.request()).body[:1] for _ in range(100)])
        await asyncio.sleep(2.1)
        late = Counter([(await client.request()).body[:1] for _ in range(100)])
        assert early[b"b"] < 25 and 40 <= late[b"b"] <= 60
        client.close()


async def test_connection_limit_queues_then_refuses(backends):
    (a,) = backends("a")
    servers = [{"name": "a", "address": a.address, "max_connections": 1}]
    async with running(service("web", servers, queue_size=1, queue_timeout="2s")) as lb:
        port = port_of(lb, "web")
        first = asyncio.create_task(Client(port).request("GET", "/slow?ms=400"))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(Client(port).request("GET", "/slow?ms=10"))
        await asyncio.sleep(0.1)
        refused = await Client(port).request("GET", "/")  # slot busy, queue full
        assert refused.status == 503 and b"queue is full" in refused.body
        assert (await first).status == 200 and (await queued).status == 200
        assert lb.services["web"].pool.get("a").active == 0


async def test_large_bodies_stream_both_ways(backends):
    (a,) = backends("a")
    async with running(service("web", [a])) as lb:
        client = Client(port_of(lb, "web"))
        body = bytes(range(256)) * 8192  # 2 MiB: above the replay and pause buffers
        r = await client.request("POST", "/upload", body)
        assert r.status == 200 and r.body.endswith(body)
        r = await client.request("GET", "/big")
        assert r.status == 200 and len(r.body) == 256 * 1024
        r = await client.request("GET", "/after")  # the same keep-alive connection still works
        assert r.body == b"a GET /after\n"
        client.close()


async def test_active_http_check_marks_a_sick_backend_down_and_back(backends):
    a, b = backends("a", "b")
    health = {"path": "/health", "expect_status": 200, "interval": "100ms", "timeout": "200ms", "rise": 2, "fall": 2}
    async with running(service("web", [a, b], health=health)) as lb:
        pool = lb.services["web"].pool
        sick = Client(b.port)
        assert (await sick.request("GET", "/admin/sick")).status == 200  # b's /health now answers 503
        sick.close()
        for _ in range(30):
            if not pool.get("b").health.serving:
                break
            await asyncio.sleep(0.05)
        assert pool.get("b").health.state.value == "down" and pool.get("a").health.serving
        client = Client(port_of(lb, "web"))
        assert {(await client.request()).body[:1] for _ in range(6)} == {b"a"}
        client.close()


async def test_drain_deadline_moves_an_unanswered_get_elsewhere(backends):
    a, b = backends("a", "b")
    spec = service("web", [a, b], algorithm="least-recently-used", drain_timeout="300ms")
    async with running(spec) as lb:
        port = port_of(lb, "web")
        slow = asyncio.create_task(Client(port).request("GET", "/slow?ms=1500"))  # to a
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        drained_at = loop.time()
        lb.set_state("web", "a", AdminState.DRAIN)
        r = await slow
        # a did not answer within the drain deadline: the GET was retried on b
        assert r.status == 200 and r.body.startswith(b"b GET /slow")
        assert 0.3 + 1.5 <= loop.time() - drained_at + 0.1 < 3.5  # deadline, then b took its 1.5 s


async def test_a_slow_reader_gets_every_byte_and_the_pool_stays_usable(backends):
    (a,) = backends("a")
    async with running(service("web", [a])) as lb:
        port = port_of(lb, "web")
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
        # pipelined: 8 x 256 KiB answers queue up while the client reads nothing
        writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * 8)
        await asyncio.sleep(0.5)
        total = 0
        for _ in range(8):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            total += len(await reader.readexactly(length))
        assert total == 8 * 256 * 1024
        writer.close()
        # meanwhile and afterwards other clients are served from the same upstream pool
        assert (await Client(port).request("GET", "/x")).status == 200
        assert lb.services["web"].pool.get("a").active == 0
