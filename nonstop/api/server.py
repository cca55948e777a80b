"""Running the API server, and the endpoint file that tells the CLI where it is.

Role: ``ApiServer`` runs ``create_app(...)`` under uvicorn on a socket it binds itself (so port 0
works and the real port is known before serving), as a task in the caller's event loop — which is
how ``nonstop up`` embeds it next to the lab (pass ``lab=``) — or blocking (``serve_forever``) for
``nonstop api serve``. Once listening it writes the endpoint file
``/run/nonstop/<cluster>/api.json`` = ``{"url", "token_file", "pid", "cluster"}`` (mode 0600; the
CLI reads it when ``--api`` is not given) and removes it on stop. The default token file is
``/run/nonstop/<cluster>/tokens.json``; ``remove_run_files(cluster)`` deletes both (for ``down``).
``any_port_if_busy=True`` falls back to a free port when the asked one is taken.

Must not: start cluster components; know routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from nonstop.api.app import create_app

RUN_ROOT = Path(os.environ.get("NONSTOP_RUN_DIR", "/run/nonstop"))
DEFAULT_PORT = 8700


def run_dir(cluster: str) -> Path:
    return RUN_ROOT / cluster


def default_token_file(cluster: str) -> Path:
    return run_dir(cluster) / "tokens.json"


def endpoint_file(cluster: str) -> Path:
    return run_dir(cluster) / "api.json"


def read_endpoint(cluster: str | None) -> dict[str, Any]:
    """The endpoint record of ``cluster`` (or of the only cluster that has one); LookupError if none."""
    if cluster is None:
        found = sorted(p.parent.name for p in RUN_ROOT.glob("*/api.json")) if RUN_ROOT.is_dir() else []
        if len(found) != 1:
            raise LookupError("no API server is running here (start one with `nonstop up` or `nonstop api serve`)"
                              if not found else f"several clusters have an API ({', '.join(found)}): pass --cluster")
        cluster = found[0]
    path = endpoint_file(cluster)
    if not path.exists():
        raise LookupError(f"no API server of cluster {cluster} is running here ({path} is missing)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def remove_run_files(cluster: str) -> None:
    """Remove the endpoint and token files (``nonstop down`` calls it; the run directory itself is the lab's)."""
    for path in (endpoint_file(cluster), endpoint_file(cluster).with_suffix(".tmp"), default_token_file(cluster)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: whoever embeds the server (``nonstop up``, or
    ``serve_forever`` below) decides what a signal means, and uvicorn's re-raise of the signal after
    shutdown would kill the process before it cleans up."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    def __init__(self, store_url: str, cluster: str, token_file: str | Path | None = None, lab: Any = None,
                 host: str = "127.0.0.1", port: int = DEFAULT_PORT, balancers: dict[str, str] | None = None,
                 write_endpoint: bool = True, any_port_if_busy: bool = False) -> None:
        self.cluster = cluster
        self.token_file = Path(token_file) if token_file else default_token_file(cluster)
        self.app = create_app(store_url, cluster, self.token_file, lab=lab, balancers=balancers)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            if not any_port_if_busy:
                self.sock.close()
                raise
            self.sock.bind((host, 0))
        self.sock.listen(128)
        bound_host, bound_port = self.sock.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self.write_endpoint = write_endpoint
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    def _publish(self) -> None:
        if not self.write_endpoint:
            return
        path = endpoint_file(self.cluster)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": self.url, "token_file": str(self.token_file), "pid": os.getpid(),
                       "cluster": self.cluster}, f)
        os.replace(tmp, path)

    def _unpublish(self) -> None:
        if self.write_endpoint:
            with contextlib.suppress(FileNotFoundError):
                endpoint = endpoint_file(self.cluster)
                if json.loads(endpoint.read_text()).get("pid") == os.getpid():
                    endpoint.unlink()

    async def start(self) -> str:
        """Serve in the running loop; returns the URL once the server accepts connections."""
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="nonstop-api")
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.02)
        self._publish()
        return self.url

    def request_stop(self) -> None:
        self.server.should_exit = True

    async def stop(self) -> None:
        self._unpublish()
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()

    async def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop cleanly (endpoint file removed)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            assert self._task is not None
            await self._task
        finally:
            await self.stop()
