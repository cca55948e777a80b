"""Bad clients: request smuggling shapes, header limits, slowloris, connection bounds.
Each case is asserted on the wire, and a well-behaved client keeps being served meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from .helpers import Client, port_of, raw_exchange, running, service

pytestmark = pytest.mark.timeout(60)

SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "duplicate-cl": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "conflicting-cl": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "invalid-cl": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3x\r\n\r\nabc",
    "negative-cl": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    "cl-list": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    "te-not-chunked": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te-chunked-twice": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-obfuscated": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
    "bad-version": b"GET / HTTP/9.7\r\nHost: t\r\n\r\n",
    "space-in-header-name": b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
}


@pytest.fixture
async def lb(backends):
    (a,) = backends("a")
    spec = service("web", [a], header_timeout="500ms", max_header_bytes=4096, max_headers=20, max_client_connections=20)
    async with running(spec) as balancer:
        yield balancer


async def test_smuggling_shapes_get_400_and_never_reach_a_backend(lb):
    port = port_of(lb, "web")
    good = Client(port)
    for name, data in SMUGGLING.items():
        out = await raw_exchange(port, data)
        assert out.startswith(b"HTTP/1.1 400 "), (name, out[:80])
        assert b"Connection: close" in out
        assert (await good.request("GET", "/still-fine")).status == 200, name
    # Only heads that were valid went on: the two bad-chunk cases have a valid head and are
    # dispatched before their body turns bad; then the client gets 400 and the upstream
    # connection is aborted mid-body (never reused), so nothing is smuggled through it.
    assert lb.services["web"].backend_stats["a"].requests == len(SMUGGLING) + 2
    assert not lb.services["web"].upstreams.busy
    good.close()


async def test_header_limits_give_431(lb):
    port = port_of(lb, "web")
    big = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 8000 + b"\r\n\r\n"
    assert (await raw_exchange(port, big)).startswith(b"HTTP/1.1 431 ")
    many = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n"
    assert (await raw_exchange(port, many)).startswith(b"HTTP/1.1 431 ")
    # a head that never ends is cut off at the limit too, without waiting for the end
    endless = b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: " + b"y" * 6000
    assert (await raw_exchange(port, endless, wait=1.0)).startswith(b"HTTP/1.1 431 ")


async def test_slowloris_gets_408_while_others_are_served(lb):
    port = port_of(lb, "web")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    good = Client(port)
    for _ in range(3):
        writer.write(b"X-Drip: 1\r\n")  # keeps dripping, never finishes the head
        assert (await good.request()).status == 200
        await asyncio.sleep(0.1)
    out = await asyncio.wait_for(reader.read(), 3)
    assert out.startswith(b"HTTP/1.1 408 ")
    assert 0.4 < loop.time() - started < 2.0
    # an idle connection that never sends a byte is closed too
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(r2.read(), 3) == b""
    w2.close()
    writer.close()
    good.close()


async def test_client_connections_are_bounded(lb):
    port = port_of(lb, "web")
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    await asyncio.sleep(0.05)
    out = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503 ") and b"too many client connections" in out
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    assert (await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")


async def test_malformed_pipelined_request_after_a_good_one(lb):
    port = port_of(lb, "web")
    out = await raw_exchange(port, b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /two HTTP/1.1\r\nHost: t\r\nContent-Length: z\r\n\r\n")
    # the bad second request closes the connection with 400; the process and others are fine
    assert b"400 Bad Request" in out
    assert (await Client(port).request("GET", "/after")).status == 200
