"""One ``nonstop up``: the whole cluster from one spec, until Ctrl-C or ``nonstop down``.

Role: ``UpSession`` cleans what a crashed run left, provides the store (SQLite, or etcd — a private
one when the URL is local and silent), brings up the lab cluster through ``LabCluster`` (fabric, BMCs,
balancers, controller, agents), serves the API and dashboard (``ApiServer``, token file 0600), shows
guests booting, prints where to look, and on SIGINT/SIGTERM tears everything down.
``apply_to_running`` is ``up`` on a cluster that is already up: the new spec goes into the store
(the same as ``nonstop apply``), the controller reconciles the guests and the running session's
``follow_services`` the balancers (nonstop/lab/services.py).

Must not: decide placement or liveness; build lab pieces itself; leave anything behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nonstop.core.spec import ClusterSpec, GuestKind
from nonstop.up import runfiles, stores

Say = Callable[[str], None]


def default_drivers(spec: ClusterSpec) -> str:
    return "process,qemu" if any(g.kind is GuestKind.VM for g in spec.guests) else "process"


class UpSession:
    def __init__(self, spec: ClusterSpec, spec_file: Path, store_url: str | None = None, *,
                 drivers: str | None = None, api_port: int = 8700, say: Say = print,
                 serve_timeout: float = 240.0) -> None:
        self.spec = spec
        self.cluster = spec.cluster
        self.spec_file = spec_file
        self.store_url = store_url or stores.default_url(spec.cluster)
        self.drivers = drivers or default_drivers(spec)
        self.api_port = api_port
        self.say = say
        self.serve_timeout = serve_timeout
        self.lab: Any = None
        self.api: Any = None
        self.etcd_pid: int | None = None
        self.store_link: Any = None
        self.etcd_dir = str(stores.STATE_DIR / f"etcd-{spec.cluster}")
        self.times: dict[str, float] = {}
        self.watch: Any = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self.services_revision = 0
        """The stored spec's revision the balancers follow (``follow_services``)."""
        self.services_error = ""
        """Why following that revision failed ("" when it did not)."""

    # ------------------------------------------------------------------ start

    def _record(self) -> None:
        runfiles.write_record(self.cluster, {
            "pid": os.getpid(), "cluster": self.cluster, "store": self.store_url, "spec_file": str(self.spec_file),
            "drivers": self.drivers, "etcd_pid": self.etcd_pid, "etcd_dir": self.etcd_dir if self.etcd_pid else None,
            "started_at": self.times.get("start"),
            "services": {n: s["listen"] for n, s in (self.lab.services.items() if self.lab else [])},
            "api": self.api.url if self.api else None,
            "services_revision": self.services_revision, "services_error": self.services_error,
        })

    def start(self) -> None:
        """Everything up to the API server (blocking). Raises on failure; call ``teardown`` then."""
        from nonstop.lab.cluster import LabCluster

        self.times["start"] = time.time()
        removed = runfiles.clean_leftovers(self.cluster, self.spec)
        if removed:
            self.say(f"cleaned leftovers of an earlier run: {'; '.join(removed)}")
        self._record()
        if self.store_url.startswith("etcd://"):
            self.etcd_pid = stores.ensure_etcd(self.store_url, Path(self.etcd_dir))
            self.say(f"store: etcd at {self.store_url.removeprefix('etcd://')}"
                     + (f" (started, pid {self.etcd_pid})" if self.etcd_pid else " (already running)"))
            self._record()
            self._link_store_into_lab()
        else:
            self.say(f"store: {self.store_url}")
        stores.fresh_start(self.store_url, self.cluster)
        self.lab = LabCluster(self.spec, self.store_url, drivers=self.drivers)
        self.lab.start(self.say)
        self.times["lab_up"] = time.time()
        self._record()

    def _link_store_into_lab(self) -> None:
        """A local etcd answers on the machine's loopback; the controller and agents live in lab
        namespaces with loopbacks of their own: relay the same port into them (nonstop.up.storelink)."""
        from urllib.parse import urlparse

        from nonstop.lab import names
        from nonstop.up.storelink import StoreLink

        parsed = urlparse(self.store_url)
        if not (parsed.hostname or "").startswith("127."):
            return
        namespaces = [names.ctl_ns(self.cluster)] + [names.host_ns(self.cluster, h.name) for h in self.spec.hosts]
        self.store_link = StoreLink(parsed.port or 2379, namespaces)
        self.store_link.start()

    async def serve(self) -> None:
        """API server, boot progress, the summary; then wait for a stop signal."""
        from nonstop.api.server import ApiServer
        from nonstop.store import open_store
        from nonstop.up.watch import BootWatch

        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        loop = asyncio.get_running_loop()
        owner, stop = os.getpid(), self._stop

        def on_signal(signum: int, _frame: object) -> None:
            # Not loop.add_signal_handler: the lab forks netns helpers (pyroute2) and SIGTERMs them;
            # asyncio's wakeup fd, shared with the fork, would deliver their signal to us.
            if os.getpid() == owner:
                loop.call_soon_threadsafe(stop.set)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        # The API reads the balancers from lab.services, which follows the applied spec.
        self.api = ApiServer(self.store_url, self.cluster, lab=self.lab, port=self.api_port, any_port_if_busy=True)
        await self.api.start()
        self.say(f"API and dashboard at {self.api.url}/")
        self._record()
        store = open_store(self.store_url)
        try:
            ports = {name: int(svc["port"]) for name, svc in self.lab.services.items()}
            self.watch = BootWatch(self.spec, store, ports, self.say, started_at=self.times["start"])
            deadline = time.monotonic() + self.serve_timeout
            while not self._stop.is_set() and time.monotonic() < deadline:
                await self.watch.poll()
                if self.watch.serving():
                    self.times["serving"] = time.time()
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.25)
        finally:
            await store.close()
        if self._stop.is_set():
            return
        self.print_summary()
        await self.follow_services()

    async def follow_services(self, every: float = 1.0) -> None:
        """Until stopped: when the stored spec's services differ from the running balancers'
        (``nonstop up``/``apply`` with a changed spec), make the balancers follow (lab/services.py)."""
        from nonstop.lab.services import apply_services, service_changes
        from nonstop.store import keys, open_store
        from nonstop.store.base import StoreError
        from nonstop.store.records import ServiceBackends, read_or_none
        from nonstop.store.state import get_spec

        assert self._stop is not None
        store = open_store(self.store_url)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), every)
                try:
                    stored = await get_spec(store, self.cluster)
                    if stored is None or stored.mod_revision == self.services_revision:
                        continue
                    if not service_changes(self.lab.spec, stored.spec):
                        self.services_revision = stored.mod_revision
                        self._record()
                        continue
                    backends = {s.name: b for s in stored.spec.services
                                if (b := await read_or_none(store, keys.service_backends(self.cluster, s.name),
                                                            ServiceBackends)) is not None}
                    self.services_error = ""
                    try:
                        for line in await asyncio.to_thread(apply_services, self.lab, stored.spec, backends):
                            self.say(line)
                    except Exception as exc:  # noqa: BLE001 - reported (here and to `up`); the cluster keeps running
                        self.services_error = f"{type(exc).__name__}: {exc}"
                        self.say(f"applying the stored spec's services failed: {self.services_error}")
                    self.services_revision = stored.mod_revision
                    self._record()
                except StoreError as exc:
                    self.say(f"reading the stored spec failed: {exc}")
        finally:
            await store.close()

    def print_summary(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(highlight=False, soft_wrap=True)
        if "serving" in self.times:
            console.print(f"[green]cluster {self.cluster} is serving[/] "
                          f"({self.times['serving'] - self.times['start']:.1f} s after `up`)")
        else:
            console.print(f"[yellow]cluster {self.cluster} is up but not fully serving after "
                          f"{self.serve_timeout:.0f} s[/] (see the dashboard and `nonstop status`)")
        table = Table("guest", "kind", "host", "state", "running after", "serving after")
        for row in self.watch.summary_rows():
            table.add_row(*row)
        console.print(table)
        if self.watch.moved():
            console.print(f"[yellow]moved while starting (a host failed over):[/] {', '.join(self.watch.moved())} "
                          "— see `nonstop get events`")
        console.print(f"dashboard:  {self.api.url}/")
        console.print(f"API:        {self.api.url}/api/v1   (OpenAPI: {self.api.url}/api/v1/docs)")
        console.print(f"API tokens: {self.api.token_file}   (admin and viewer; mode 0600)")
        for name, svc in self.lab.services.items():
            console.print(f"service {name}: http://{svc['listen']}/")
        console.print("Ctrl-C or `nonstop down` stops the cluster and removes it.")

    # ------------------------------------------------------------------ stop

    def request_stop(self) -> None:
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    def teardown(self) -> float:
        """Stop everything this session started; seconds it took."""
        from nonstop.api.server import remove_run_files

        began = time.monotonic()
        if self.lab is not None:
            self.lab.stop()
        else:
            with contextlib.suppress(Exception):
                runfiles.clean_leftovers(self.cluster, self.spec)
        if self.store_link is not None:
            self.store_link.stop()
        if self.etcd_pid:
            stores.stop_etcd(self.etcd_pid, self.etcd_dir)
        remove_run_files(self.cluster)
        runfiles.remove_record(self.cluster)
        stores.remove_default(self.store_url, self.cluster)
        runfiles.remove_run_dir(self.cluster)
        return time.monotonic() - began

    def run(self) -> int:
        """The whole life of ``up`` in the foreground; exit code."""
        owner = os.getpid()

        def interrupt(signum: int, _frame: object) -> None:
            if os.getpid() != owner:  # a forked helper (pyroute2, netns) inherited this handler
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            raise KeyboardInterrupt

        old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            self.start()
            asyncio.run(self._serve_then_stop_api())
        except KeyboardInterrupt:
            self.say("interrupted")
        except Exception as exc:  # noqa: BLE001 (reported, then everything is removed)
            self.say(f"error: {exc}")
            code = 1
        finally:
            for sig in old:
                signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
            self.say("stopping the cluster and removing it")
            took = self.teardown()
            self.say(f"cluster {self.cluster} removed ({took:.1f} s)")
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return code

    async def _serve_then_stop_api(self) -> None:
        try:
            await self.serve()
        finally:
            if self.api is not None:
                await self.api.stop()


async def apply_to_running(record: dict[str, Any], spec: ClusterSpec, text: str, filename: str) -> dict[str, Any]:
    """``up`` on a running cluster: store the new spec (as ``nonstop apply``); the controller reconciles
    guests, the running ``up`` session the balancers (services added, removed or changed).
    Raises ValueError when the change needs a new lab (hosts or switches changed)."""
    from nonstop.api import actions
    from nonstop.store import open_store
    from nonstop.store.state import get_spec

    store = open_store(record["store"])
    try:
        current = await get_spec(store, spec.cluster)
        if current is not None:
            before = current.spec
            for part in ("switches", "hosts"):
                if getattr(before, part) != getattr(spec, part):
                    raise ValueError(f"{part} changed: that needs a new lab (`nonstop down`, then `nonstop up`)")
        return await actions.apply_spec(store, spec.cluster, text, by="nonstop up", filename=filename)
    finally:
        await store.close()
