"""Store fixtures: every conformance test runs against SQLite and against a real etcd 3.4.

The etcd server is started once per test session on 127.0.0.1 with free ports and a temporary
data dir, waited for until healthy, and stopped by its PID at the end. Each test gets its own
key prefix, so tests sharing the etcd server never see each other's keys.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nonstop.store import Store

from .helpers import Backend

ETCD = shutil.which("etcd")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EtcdServer:
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    if ETCD is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    data_dir = Path(tempfile.mkdtemp(prefix="nonstop-store-etcd-"))
    client_port, peer_port = _free_port(), _free_port()
    name = f"nonstop-test-{uuid.uuid4().hex[:6]}"
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    log = (data_dir / "etcd.log").open("wb")
    process = subprocess.Popen(
        [
            ETCD,
            "--name", name,
            "--data-dir", str(data_dir / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}",
            "--log-level", "error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {process.returncode}: {(data_dir / 'etcd.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as response:
                    if json.load(response).get("health") == "true":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy within 20 s")
            time.sleep(0.05)
        yield EtcdServer(f"etcd://127.0.0.1:{client_port}", process, data_dir)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "etcd"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        backend = Backend("sqlite", f"sqlite://{tmp_path / 'state.db'}", 1, [])
    else:
        server: EtcdServer = request.getfixturevalue("etcd_server")
        backend = Backend("etcd", server.url, 2, [])
    try:
        yield backend
    finally:
        for store in backend.opened:
            await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone (the etcd server is shared by the session)."""
    return f"/test/{uuid.uuid4().hex[:10]}/"
