"""Reachability probes: real TCP between lab namespaces, without starting processes.

Role: ``TcpResponder`` listens inside a namespace and answers every connection with
``<name> <client address>\n``; ``tcp_request`` connects from another namespace and
returns that line (None when the connection is refused, dropped or times out). Sockets
are created by a thread inside the namespace (nonstop.net.netns), so the probes are
ordinary kernel TCP through the lab's links, bridges and nftables. Used by the
reachability tests and by later issues' checks.

Must not: change any configuration.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from nonstop.net import netns


def _make_socket(bind: tuple[str, int] | None, listen: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if listen:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind is not None:
        sock.bind(bind)
    if listen:
        sock.listen(64)
    return sock


def socket_in(ns: str, bind: tuple[str, int] | None = None, listen: bool = False) -> socket.socket:
    """A TCP socket that belongs to namespace ``ns``."""
    with netns.NetnsThread(ns) as thread:
        return thread.call(_make_socket, bind, listen)


class TcpResponder:
    def __init__(self, ns: str, address: str = "0.0.0.0", port: int = 80, name: str | None = None) -> None:
        self.ns = ns
        self.name = name or ns
        self.sock = socket_in(ns, (address, port), listen=True)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"responder-{ns}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(f"{self.name} {peer[0]}\n".encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> TcpResponder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tcp_request(ns: str, address: str, port: int = 80, timeout: float = 1.0, send: bytes = b"") -> str | None:
    """Connect from ``ns`` to ``address:port``, send ``send``, and return the last line
    received before the peer closed, or None when nothing came back."""
    sock = socket_in(ns)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        if send:
            sock.sendall(send)
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        lines = [line for line in data.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else None
    except OSError:
        return None
    finally:
        sock.close()


def http_get(ns: str, address: str, port: int = 80, path: str = "/", timeout: float = 1.0) -> str | None:
    """The last line of an HTTP/1.0 GET's response body (the upstream answers one line)."""
    return tcp_request(ns, address, port, timeout, f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
