"""A real etcd server for tests: 127.0.0.1, free ports, a temporary data dir, stopped by PID.

``start()`` waits until ``/health`` says true; ``stop()`` terminates (then kills) the process
it started; ``start()`` again reuses the same ports and data dir (a restart). ``cleanup()``
stops it and removes the data dir.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

ETCD = shutil.which("etcd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdProcess:
    def __init__(self) -> None:
        if ETCD is None:
            raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
        self.data_dir = Path(tempfile.mkdtemp(prefix="nonstop-store-etcd-"))
        self.client_port, self.peer_port = free_port(), free_port()
        self.name = f"nonstop-test-{uuid.uuid4().hex[:6]}"
        self.url = f"etcd://127.0.0.1:{self.client_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        assert ETCD is not None
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        log = (self.data_dir / "etcd.log").open("ab")
        self.process = subprocess.Popen(
            [
                ETCD,
                "--name", self.name,
                "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}",
                "--log-level", "error",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                tail = (self.data_dir / "etcd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"etcd exited with {self.process.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as response:
                    if json.load(response).get("health") == "true":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd did not become healthy within {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def running_etcd() -> Iterator[EtcdProcess]:
    """A started etcd, stopped and removed on exit."""
    server = EtcdProcess()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
