"""Running the balancer: L4 proxy, admin API, Prometheus, hot reload under traffic, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from nonstop.lb.config import LbConfig

from .helpers import ROOT, Client, free_port, load, port_of, running, service

pytestmark = pytest.mark.timeout(90)


async def wait_serving(port: int, timeout: float = 45.0) -> None:
    """Until a CLI-started balancer answers (its imports alone take seconds on a loaded machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if (await Client(port).request("GET", "/", headers="Connection: close\r\n")).status == 200:
                return
        except OSError:
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.1)


async def admin_call(balancer, method: str, path: str, body: object | None = None) -> tuple[int, object]:
    host, port = balancer.admin_address
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    ctype = b"json" in head.lower()
    return status, json.loads(payload) if ctype else payload.decode()


async def test_tcp_proxy_round_robin_and_connect_retry(backends):
    a, b = backends("a", "b")
    dead = {"name": "dead", "address": "127.0.0.1:1"}
    spec = service("tcp", [a, dead, b], mode="tcp", health={"enabled": False})
    async with running(spec) as lb:
        port = port_of(lb, "tcp")
        seen = Counter()
        for _ in range(6):
            client = Client(port)
            r = await client.request("GET", "/t")
            seen[r.body[:1]] += 1
            r2 = await client.request("GET", "/again")  # same TCP connection, same backend
            assert r2.body[:1] == r.body[:1]
            client.close()
        assert set(seen) == {b"a", b"b"} and sum(seen.values()) == 6
        assert lb.services["tcp"].stats.retries >= 1


async def test_admin_api_runtime_changes_and_metrics(backends):
    a, b, c = backends("a", "b", "c")
    async with running(service("web", [a, b], algorithm="weighted-round-robin"), admin=True) as lb:
        client = Client(port_of(lb, "web"))
        status, services = await admin_call(lb, "GET", "/services")
        assert status == 200 and [s["name"] for s in services] == ["web"]
        assert {x["name"]: x["health"] for x in services[0]["backends"]} == {"a": "up", "b": "up"}
        status, added = await admin_call(lb, "POST", "/services/web/backends", {"name": "c", "address": c.address})
        assert status == 201 and added["name"] == "c"
        assert (await admin_call(lb, "POST", "/services/web/backends", {"name": "c", "address": c.address}))[0] == 409
        status, changed = await admin_call(lb, "PUT", "/services/web/backends/a", {"state": "maint"})
        assert status == 200 and changed["admin"] == "maint" and changed["serving"] is False
        status, changed = await admin_call(lb, "PATCH", "/services/web/backends/b", {"weight": 3})
        assert status == 200 and changed["weight"] == 3
        got = Counter([(await client.request()).body[:1] for _ in range(40)])
        assert got[b"a"] == 0 and got[b"b"] == 30 and got[b"c"] == 10
        assert (await admin_call(lb, "PUT", "/services/web/backends/a", {"state": "sleepy"}))[0] == 400
        assert (await admin_call(lb, "PUT", "/services/web/backends/a", {"weight": 5000}))[0] == 400
        assert (await admin_call(lb, "GET", "/services/nope"))[0] == 404
        assert (await admin_call(lb, "DELETE", "/services/web/backends/c"))[0] == 200
        assert (await admin_call(lb, "GET", "/services/web/backends/c"))[0] == 404
        status, stats = await admin_call(lb, "GET", "/stats")
        assert stats["web"]["backends"]["b"]["requests"] == 30
        status, text = await admin_call(lb, "GET", "/metrics")
        assert status == 200
        assert 'nonstop_lb_backend_requests_total{backend="b",service="web"} 30.0' in text
        assert 'nonstop_lb_backend_latency_seconds_count{backend="b",service="web"} 30.0' in text
        assert 'nonstop_lb_backend_serving{backend="a",service="web"} 0.0' in text
        client.close()


async def test_hot_reload_under_traffic_drops_nothing(backends, tmp_path):
    a, b, c = backends("a", "b", "c")
    path = tmp_path / "lb.yaml"
    port = free_port()
    first = {"services": [service("web", [a, b], listen=f"127.0.0.1:{port}")]}
    path.write_text(yaml.safe_dump(first))
    config = LbConfig.model_validate(first)
    from nonstop.lb.runtime import Balancer

    lb = Balancer(config, config_path=path)
    await lb.start()
    try:
        traffic = asyncio.create_task(load(port, clients=8, seconds=2.0))
        await asyncio.sleep(0.5)
        second = {"services": [service("web", [b, c], listen=f"127.0.0.1:{port}", retries=2)]}
        path.write_text(yaml.safe_dump(second))
        await lb.reload()
        await asyncio.sleep(0.4)
        path.write_text(yaml.safe_dump({"services": [service("web", [a, b, c], listen=f"127.0.0.1:{port}")]}))
        await lb.reload()
        result = await traffic
        assert result["failed"] == 0, result["errors"][:5]
        assert set(result["by_backend"]) == {"a", "b", "c"}
        assert lb.generation == 2 and set(lb.services["web"].pool.backends) == {"a", "b", "c"}
        path.write_text("services: [{name: web, listen: nowhere}]")
        with pytest.raises(Exception, match="listen"):
            await lb.reload()
        assert set(lb.services["web"].pool.backends) == {"a", "b", "c"}  # the running config stays
    finally:
        await lb.stop()


def test_cli_rejects_a_bad_config_with_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: web\n    listen: 127.0.0.1:8080\n    algorithm: fastest\n    servers: []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nonstop.cli.main", "lb", "--config", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert f"{bad}:4 services[0].algorithm" in proc.stderr


async def test_cli_serves_reloads_on_sighup_and_stops_cleanly(backends, tmp_path):
    a, b = backends("a", "b")
    port, admin = free_port(), free_port()
    path = tmp_path / "lb.yaml"
    doc = {"admin": f"127.0.0.1:{admin}", "services": [service("web", [a], listen=f"127.0.0.1:{port}")]}
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-m", "nonstop.cli.main", "lb", "--config", str(path)], cwd=ROOT)
    try:
        await wait_serving(port)
        client = Client(port)
        assert (await client.request()).body.startswith(b"a ")
        doc["services"][0]["servers"] = [{"name": "b", "address": b.address}]
        path.write_text(yaml.safe_dump(doc))
        os.kill(proc.pid, signal.SIGHUP)
        for _ in range(50):
            if (await client.request()).body.startswith(b"b "):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("SIGHUP reload did not take effect")
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        writer.write(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert b" 200 " in answer[:20] and b'"generation": 2' in answer
        assert (await client.request()).body.startswith(b"b ")  # same keep-alive connection
        client.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


async def test_workers_share_health_and_admin_state(backends, tmp_path):
    a, b = backends("a", "b")
    port, admin = free_port(), free_port()
    path = tmp_path / "lb.yaml"
    doc = {"admin": f"127.0.0.1:{admin}", "services": [service("web", [a, b], listen=f"127.0.0.1:{port}")]}
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-m", "nonstop.cli.main", "lb", "--config", str(path), "--workers", "2"], cwd=ROOT)
    try:
        await wait_serving(port)
        fresh = Counter()
        for _ in range(20):  # new connections spread over both workers (SO_REUSEPORT)
            fresh[(await Client(port).request("GET", "/", headers="Connection: close\r\n")).body[:1]] += 1
        assert set(fresh) == {b"a", b"b"}
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        body = b'{"state": "maint"}'
        writer.write(b"PUT /services/web/backends/a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b" 200 " in (await reader.read())[:20]
        writer.close()
        await asyncio.sleep(0.5)  # workers poll the shared state every 100 ms
        after = Counter()
        for _ in range(20):
            after[(await Client(port).request("GET", "/", headers="Connection: close\r\n")).body[:1]] += 1
        assert after == {b"b": 20}
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        writer.write(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert b" 200 " in (await reader.read())[:20]
        writer.close()
        await asyncio.sleep(0.5)  # workers reload the file too, then follow the shared state again
        again = Counter()
        for _ in range(10):
            again[(await Client(port).request("GET", "/", headers="Connection: close\r\n")).body[:1]] += 1
        assert again == {b"b": 10}  # a reload keeps run-time admin states
        await asyncio.sleep(1.2)  # workers write their stats every second
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        writer.write(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        stats = json.loads((await reader.read()).split(b"\r\n\r\n", 1)[1])
        writer.close()
        assert stats["web"]["service"]["requests"] >= 40
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
