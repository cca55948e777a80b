"""The store relay (nonstop/up/storelink.py) against real namespaces.

A namespace that cannot be entered (torn down between the relay's look and its entry, or a stray
file under /run/netns) must cost that namespace its listener for a round, never the relay: the
relay's thread carries the store traffic of every lab host.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator

import pytest

from nonstop.lab.probe import socket_in
from nonstop.net import netns
from nonstop.up.storelink import StoreLink

pytestmark = pytest.mark.root


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A root-namespace TCP server on 127.0.0.1 that answers every line with the line."""
    import threading

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(conn.recv(1024))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def _ask_through(ns: str, port: int, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket_in(ns)
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"ping\n")
            return sock.recv(1024)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            sock.close()


def test_a_namespace_that_cannot_be_entered_does_not_stop_the_relay(echo_server: int) -> None:
    tag = secrets.token_hex(3)
    good, bogus = f"nonstop-sl{tag}", f"nonstop-sl{tag}-bogus"
    netns.create(good)
    bogus_path = netns.netns_path(bogus)
    try:
        netns.run(good, ["ip", "link", "set", "lo", "up"])
        with open(bogus_path, "w"):
            pass  # exists, so the relay tries to enter it; setns on a plain file fails
        link = StoreLink(echo_server, [bogus, good])
        link.start()
        try:
            assert _ask_through(good, echo_server) == b"ping\n"
            time.sleep(0.5)  # several more rounds over the bogus namespace
            assert link._thread is not None and link._thread.is_alive()
            assert _ask_through(good, echo_server) == b"ping\n"
        finally:
            link.stop()
    finally:
        os.unlink(bogus_path)
        netns.delete(good)
