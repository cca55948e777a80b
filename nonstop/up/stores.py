"""The store of a ``nonstop up``: SQLite by default, or etcd (a private one started when the URL is local
and nothing answers there).

Role: ``default_url(cluster)``; ``fresh_start(url, cluster)`` removes the state of an earlier run of the
same cluster (a new ``up`` is a new cluster: stale placements would be obeyed); ``ensure_etcd(url, dir)``
starts ``etcd`` listening on the URL's loopback port when nothing answers and returns its pid;
``stop_etcd``.

Must not: write cluster state (LabCluster puts the spec; the controller owns the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

STATE_DIR = Path("/var/lib/nonstop")


def default_url(cluster: str) -> str:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{STATE_DIR / cluster}.db"


def _sqlite_path(url: str) -> Path | None:
    parsed = urlparse(url)
    return Path(parsed.path) if parsed.scheme == "sqlite" else None


def fresh_start(url: str, cluster: str) -> None:
    """Forget an earlier run's state of ``cluster`` in the store at ``url``."""
    from nonstop.store import keys, open_store

    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)

    async def wipe() -> None:
        store = open_store(url)
        try:
            await store.delete_prefix(keys.cluster_prefix(cluster))
        finally:
            await store.close()

    asyncio.run(wipe())


def remove_default(url: str, cluster: str) -> None:
    """Delete the default SQLite file of ``cluster`` (a store the user named is left alone)."""
    if url != f"sqlite:///{STATE_DIR / cluster}.db":
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{STATE_DIR / cluster}.db{suffix}").unlink()


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def ensure_etcd(url: str, data_dir: Path, timeout: float = 15.0) -> int | None:
    """Start a private etcd for ``etcd://127.x.y.z:PORT`` when nothing answers there; its pid (None
    when one already answers). A non-loopback URL is used as given."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 2379
    if _answers(host, port) or not host.startswith("127."):
        return None
    binary = shutil.which("etcd")
    if binary is None:
        raise RuntimeError(f"nothing answers at {url} and etcd is not installed (apt-get install etcd-server)")
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    client = f"http://{host}:{port}"
    peer = f"http://{host}:{port + 1}"
    log = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115 (handed to the child)
    proc = subprocess.Popen(  # noqa: S603 (fixed argv)
        [binary, "--name", "nonstop", "--data-dir", str(data_dir), "--listen-client-urls", client,
         "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"nonstop={peer}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while not _answers(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_etcd(proc.pid, str(data_dir))
            raise RuntimeError(f"etcd did not start at {url} (log: {data_dir.parent / data_dir.name}.log)")
        time.sleep(0.1)
    time.sleep(0.5)  # serving the gRPC API shortly after the port opens
    return proc.pid


def stop_etcd(pid: int, data_dir: str | None) -> None:
    from nonstop.net import netns

    netns.stop_pids([pid])
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    if data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            Path(f"{data_dir}.log").unlink()
