"""HTTP GET from inside a network namespace: readiness probes for guests, tests and benchmarks.

Role: ``http_get(netns, host, port, path)`` opens a TCP connection from a worker thread that has
entered ``netns`` (Linux keeps the network namespace per thread, and a socket keeps the namespace
it was created in), sends one HTTP/1.1 GET and returns (status, body). ``wait_http_ok`` polls until
the first 200 or a deadline. ``netns=None`` means the caller's own namespace.

Must not: follow redirects, retry by itself (the caller decides), or leave threads behind.
"""

from __future__ import annotations

import socket
import time

from nonstop.net.netns import NetnsThread


def _get(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes]:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP response from {host}:{port}")
    return int(parts[1]), body


def http_get(netns: str | None, host: str, port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of one GET; raises OSError/ConnectionError when nothing answers."""
    if netns is None:
        return _get(host, port, path, timeout)
    with NetnsThread(netns) as thread:
        return thread.call(_get, host, port, path, timeout)


def wait_http_ok(
    netns: str | None, host: str, port: int, path: str = "/health", deadline: float = 5.0, interval: float = 0.005
) -> float:
    """Seconds until the first 200 (polling every ``interval``); TimeoutError after ``deadline``."""
    start = time.monotonic()
    thread = NetnsThread(netns) if netns else None
    try:
        while True:
            try:
                status = (thread.call(_get, host, port, path, 1.0) if thread else _get(host, port, path, 1.0))[0]
                if status == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            if time.monotonic() - start > deadline:
                raise TimeoutError(f"no HTTP 200 from {host}:{port}{path} within {deadline}s")
            time.sleep(interval)
    finally:
        if thread is not None:
            thread.close()
