"""Helpers for the balancer's integration tests: real backend processes and a tiny client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nonstop.lb.config import LbConfig
from nonstop.lb.runtime import Balancer

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackendProcess:
    """A real HTTP backend (tests/lb/backend_server.py) in its own process."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> BackendProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lb.backend_server", "--port", str(self.port), "--name", self.name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def service(name: str, servers: list[Any], **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "listen": kw.pop("listen", "127.0.0.1:0"),
        "servers": [
            s if isinstance(s, dict) else {"name": s.name, "address": s.address} for s in servers
        ],
        # quick checks, but tolerant of a loaded CI machine (a 1 s probe timeout, two misses)
        "health": kw.pop("health", {"interval": "200ms", "timeout": "1s", "rise": 1, "fall": 2}),
    }
    doc.update(kw)
    return doc


@contextlib.asynccontextmanager
async def running(*services: dict[str, Any], admin: bool = False, **kw: Any) -> AsyncIterator[Balancer]:
    config = LbConfig.model_validate({"services": list(services), "admin": "127.0.0.1:0" if admin else None})
    balancer = Balancer(config, **kw)
    await balancer.start()
    try:
        yield balancer
    finally:
        await balancer.stop()


def port_of(balancer: Balancer, name: str) -> int:
    listening = balancer.services[name].listening
    assert listening is not None
    return listening[1]


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:60]!r}>"


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            body += chunk[:-2]
            if size == 0:
                break
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return Response(status, headers, body)


class Client:
    """One keep-alive client connection."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str = "GET", path: str = "/", body: bytes = b"", headers: str = "") -> Response:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n{length}{headers}\r\n".encode() + body)
        try:
            response = await asyncio.wait_for(read_response(self.reader), 10)
        except BaseException:
            self.close()
            raise
        if response.headers.get("connection") == "close":
            self.close()
        return response

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


async def raw_exchange(port: int, data: bytes, *, wait: float = 2.0) -> bytes:
    """Send raw bytes, return everything received until the server closes (or ``wait``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


async def load(port: int, *, clients: int, seconds: float, path: str = "/") -> dict[str, Any]:
    """Bounded GET load: ``clients`` keep-alive connections for ``seconds``; counts outcomes."""
    result: dict[str, Any] = {"ok": 0, "failed": 0, "errors": [], "by_backend": {}}
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def one() -> None:
        client = Client(port)
        while loop.time() < end:
            try:
                r = await client.request("GET", path)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                result["failed"] += 1
                result["errors"].append(repr(exc))
                client.close()
                continue
            if r.status == 200:
                result["ok"] += 1
                name = r.body.split(b" ", 1)[0].decode()
                result["by_backend"][name] = result["by_backend"].get(name, 0) + 1
            else:
                result["failed"] += 1
                result["errors"].append(f"{r.status} {r.body[:80]!r}")
        client.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return result
