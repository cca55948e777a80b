"""Starting the hardware watcher: in a background thread (tests, an in-process lab) or as a
process (``python -m nonstop.components``, what a lab or a controller host starts).

Role: glue only — open the store, build the BMC URL map, run ``run_hardware_watcher`` until
told to stop. ``WatcherThread`` gives synchronous callers (pytest, the lab) a running watcher
and a handle to it; ``main`` is the process entry point with the same options as the
controller (``--store``, ``--cluster``, ``--bmc HOST=IP:PORT``, ``--bmc-password-file``,
``--netns``).

Must not: hold policy or Redfish logic of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from nonstop.components.watcher import HardwareWatcher, run_hardware_watcher
from nonstop.core.spec import ClusterSpec

log = logging.getLogger("nonstop.components")


def with_policy(spec: ClusterSpec, on_degraded: str | None = None, stability_window: float | None = None) -> ClusterSpec:
    """``spec`` with its component policy overridden (tests, an operator's dry run)."""
    policy = spec.policies.components.model_copy(update={
        k: v for k, v in (("on_degraded", on_degraded), ("stability_window", stability_window)) if v is not None})
    return spec.model_copy(update={"policies": spec.policies.model_copy(update={"components": policy})})


class WatcherThread:
    """``run_hardware_watcher`` on its own event loop in a daemon thread."""

    def __init__(self, store_url: str, spec: ClusterSpec, bmc_urls: dict[str, str], *, password: str,
                 interval: float = 0.5, netns: str | None = None, registry: Any = None) -> None:
        self.args = (store_url, spec, bmc_urls)
        self.kwargs = {"password": password, "interval": interval, "netns": netns, "registry": registry}
        self.watcher: HardwareWatcher | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="components-watcher", daemon=True)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from nonstop.store import open_store

        store_url, spec, bmc_urls = self.args
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        store = open_store(store_url)
        try:
            await run_hardware_watcher(store, spec, bmc_urls, stop=self._stop, watcher_ready=self._got,
                                       **self.kwargs)
        finally:
            await store.close()

    def _got(self, watcher: HardwareWatcher) -> None:
        self.watcher = watcher
        self._ready.set()

    def start(self) -> WatcherThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the hardware watcher did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> WatcherThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nonstop.components")
    parser.add_argument("--store", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--bmc", action="append", default=[], help="HOST=IP:PORT (repeat)")
    parser.add_argument("--bmc-password-file", required=True)
    parser.add_argument("--netns", help="namespace to reach the BMCs from (the lab's ctl)")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> None:
    from nonstop.store import open_store
    from nonstop.store.state import get_spec

    store = open_store(args.store)
    try:
        stored = await get_spec(store, args.cluster)
        if stored is None:
            raise SystemExit(f"no spec for cluster {args.cluster} in {args.store}")
        registry = None
        if args.metrics_port:
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry()
            start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        bmcs = dict(item.split("=", 1) for item in args.bmc)
        await run_hardware_watcher(store, stored.spec, bmcs, password=Path(args.bmc_password_file).read_text().strip(),
                                   stop=stop, interval=args.interval, netns=args.netns, registry=registry,
                                   follow_spec=True)
    finally:
        await store.close()

