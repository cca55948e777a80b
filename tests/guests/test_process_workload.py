"""The built-in workload server's pages and knob bounds (served for real on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from nonstop.drivers.probe import http_get, wait_http_ok


@pytest.fixture
def server() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, "NONSTOP_GUEST": "w-0", "NONSTOP_HOST": "h9", "NONSTOP_BOOT_ID": "b00t"}
    proc = subprocess.Popen([sys.executable, "-m", "nonstop.workload", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http_ok(None, "127.0.0.1", port, deadline=10)
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0  # SIGTERM is a clean exit


def test_health_and_identity(server: int) -> None:
    assert http_get(None, "127.0.0.1", server, "/health") == (200, b"ok\n")
    status, body = http_get(None, "127.0.0.1", server, "/")
    page = json.loads(body)
    assert status == 200 and page["guest"] == "w-0" and page["host"] == "h9" and page["boot_id"] == "b00t"
    assert {"vcpus", "memory_limit", "pid", "uptime"} <= set(page)


@pytest.mark.parametrize("path", ["/burn?cpu=17&seconds=1", "/burn?cpu=1&seconds=301", "/hold?mb=65537",
                                  "/hold?mb=1&seconds=3601", "/burn?cpu=-1", "/hold?mb=abc"])
def test_knobs_are_bounded(server: int, path: str) -> None:
    status, body = http_get(None, "127.0.0.1", server, path)
    assert status == 400 and b"error" in body


def test_hold_and_burn_do_what_they_say(server: int) -> None:
    status, body = http_get(None, "127.0.0.1", server, "/hold?mb=16&seconds=2")
    assert status == 200 and json.loads(body)["holding_mb"] == 16
    time.sleep(0.1)
    assert json.loads(http_get(None, "127.0.0.1", server, "/")[1])["held_mb"] == 16
    status, body = http_get(None, "127.0.0.1", server, "/burn?cpu=1&seconds=0.2")
    assert status == 200 and json.loads(body)["burning"] == 1
    assert http_get(None, "127.0.0.1", server, "/nope")[0] == 404
