"""A small real HTTP/1.1 backend for the balancer's tests (run as a process, killed by PID).

``python -m tests.lb.backend_server --port P --name N``: answers every request with
``200`` and a body ``N <method> <path>`` (POST bodies are echoed after it), keeps
connections alive, and obeys a few test knobs in the path: ``/slow?ms=N`` delays the
answer, ``/health`` answers 200 (or 503 once ``/admin/sick`` was called), ``/chunked``
answers with chunked encoding, ``/big`` sends 256 KiB, ``/headers`` echoes the request headers.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop

STATE = {"sick": False}


class Handler(asyncio.Protocol):
    def __init__(self, name: bytes) -> None:
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.headers: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport:
                self.transport.write(b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(name + b": " + value)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        url = httptools.parse_url(self.url)
        path = url.path
        query = dict(p.split(b"=", 1) for p in (url.query or b"").split(b"&") if b"=" in p)
        keep = self.parser.should_keep_alive()
        if path == b"/slow":
            delay = int(query.get(b"ms", b"100")) / 1000
            asyncio.get_running_loop().call_later(delay, self.answer, method, path, keep)
        else:
            self.answer(method, path, keep)

    def answer(self, method: bytes, path: bytes, keep: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        status = b"200 OK"
        body = self.name + b" " + method + b" " + path + b"\n" + b"".join(self.body)
        if path == b"/health" and STATE["sick"]:
            status = b"503 Sick"
        if path == b"/admin/sick":
            STATE["sick"] = True
        if path == b"/headers":
            body = b"\n".join(self.headers) + b"\n"
        if path == b"/big":
            body = b"x" * 1024 * 256
        conn = b"" if keep else b"Connection: close\r\n"
        if path == b"/chunked":
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n" + conn + b"\r\n")
            t.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))
        else:
            t.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\nConnection: keep-alive\r\n" % len(body) + conn + b"\r\n" + body)
        if not keep:
            t.close()


async def main(port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Handler(name.encode()), "127.0.0.1", port, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.port, args.name))
