"""The balancer process: services, health checkers, nft plane, admin API, reload, workers.

Role: build a ``ServiceRuntime`` per configured service and run it; keep health checkers
and the nft table in step; serve the admin API; reload the config on SIGHUP or
``POST /reload`` in place (same-named services are updated, so open connections live on;
a service whose listen address or mode changed is replaced).

Workers (``--workers N``, N > 1): this process becomes the *control* process — it runs the
health checks, the admin API and the nft plane, and publishes the pool state (members,
weights, admin states, health) to ``state.json`` in a private run directory; N worker
processes (``nonstop.lb.worker``) each listen with SO_REUSEPORT, poll that file (one
``stat`` every 100 ms) and apply it, and write their stats every second for the control
process to sum. One checker instead of N keeps probe load and health decisions single
and consistent; passive outlier detection stays local to each worker (it reacts to that
worker's own traffic within milliseconds, which no file round-trip would).

Must not: parse HTTP or choose backends (the services and the pool do).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest

from nonstop.core.lb.health import SERVING, AdminState, Health, HealthEvent
from nonstop.core.spec import ServiceSpec, StaticServer
from nonstop.lb.admin import AdminServer
from nonstop.lb.config import LbConfig, load_config, parse_address
from nonstop.lb.health_checker import HealthChecker
from nonstop.lb.nft_plane import NftPlane
from nonstop.lb.service import ServiceRuntime
from nonstop.lb.stats import merge_snapshots, prometheus_registry

log = logging.getLogger("nonstop.lb")

DEFAULT_NFT_TABLE = "nonstop_lb"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Balancer:
    def __init__(
        self,
        config: LbConfig,
        *,
        config_path: str | Path | None = None,
        workers: int = 1,
        nft_table: str = DEFAULT_NFT_TABLE,
        role: str = "single",
        state_dir: str | Path | None = None,
        worker_id: int = 0,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path else None
        self.workers = workers
        self.role = role if workers <= 1 or role == "worker" else "control"
        self.nft_table = nft_table
        self.worker_id = worker_id
        self.state_dir = Path(state_dir) if state_dir else None
        self.services: dict[str, ServiceRuntime] = {}
        self.checkers: dict[str, HealthChecker] = {}
        self.admin: AdminServer | None = None
        self.admin_address: tuple[str, int] | None = None
        self.nft: NftPlane | None = None
        self.generation = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped: asyncio.Event | None = None
        self._registry = prometheus_registry(self._metrics_source)
        self._publish_pending = False
        self._applied_mtime = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def serves_data(self) -> bool:
        return self.role in ("single", "worker")

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if self.role == "control":
            self.state_dir = Path(tempfile.mkdtemp(prefix="nonstop-lb-"))
        for spec in self.config.services:
            await self._start_service(spec)
        if self.role != "worker" and self.config.admin:
            host, port = parse_address(self.config.admin)
            self.admin = AdminServer(self)
            self.admin_address = await self.admin.start(host, port)
            log.info("admin API on http://%s:%d", *self.admin_address)
        if self.role == "control":
            self._publish()
            self._spawn_workers()
            self._tasks.append(self.loop.create_task(self._watch_workers()))
        if self.role == "worker":
            self._apply_state()
            self._tasks.append(self.loop.create_task(self._worker_loop()))

    async def _start_service(self, spec: ServiceSpec) -> ServiceRuntime:
        assert self.loop is not None
        svc = ServiceRuntime(spec, self.loop, reuse_port=self.workers > 1)
        self.services[spec.name] = svc
        if spec.mode == "nft":
            if self.role != "worker":
                if self.nft is None:
                    self.nft = NftPlane(self.nft_table, self.loop)
                self.nft.attach(svc)
                self.nft.apply()
            await svc.start()
        elif self.serves_data:
            await svc.start()
        if self.role != "worker":
            checker = HealthChecker(svc)
            self.checkers[spec.name] = checker
            checker.sync()
            svc.listeners.append(lambda event: checker.sync())
            if self.role == "control":
                svc.listeners.append(lambda event: self._publish_soon())
        log.info("service %s (%s) on %s: %d servers", spec.name, spec.mode, svc.address, len(spec.servers))
        return svc

    async def _stop_service(self, name: str, grace: float) -> None:
        svc = self.services.pop(name)
        checker = self.checkers.pop(name, None)
        if checker is not None:
            checker.stop()
        if self.nft is not None and spec_mode(svc) == "nft":
            self.nft.detach(svc)
            self.nft.apply()
        await svc.stop(grace)

    async def stop(self, grace: float = 0.0) -> None:
        for task in self._tasks:
            task.cancel()
        if self.admin is not None:
            await self.admin.stop()
        for proc in self.worker_procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(self._stop_service(n, grace) for n in list(self.services)))
        if self.nft is not None:
            self.nft.remove()
        for proc in self.worker_procs:
            try:
                proc.wait(timeout=max(grace, 0) + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.role == "control" and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if self._stopped is not None:
            self._stopped.set()

    async def run_until_signalled(self) -> None:
        """Start, then serve until SIGTERM/SIGINT (graceful stop); SIGHUP reloads."""
        await self.start()
        # Everything built so far (config models, imports) lives as long as the process:
        # move it out of the collector's reach, so a full collection under load only walks
        # the connections and requests of the moment (a shorter pause, a better p99).
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_logged()))
        await stop.wait()
        await self.stop(grace=min(5.0, max((s.spec.drain_timeout for s in self.services.values()), default=0)))

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
            log.info("config reloaded (generation %d)", self.generation)
        except Exception as exc:  # a bad file keeps the running config
            log.error("reload failed, keeping the running config: %s", exc)

    # ------------------------------------------------------------------ reload

    async def reload(self, config: LbConfig | None = None) -> None:
        if config is None:
            if self.config_path is None:
                raise RuntimeError("no config file to reload from")
            config = load_config(self.config_path)
        wanted = {s.name: s for s in config.services}
        for name in [n for n in self.services if n not in wanted]:
            await self._stop_service(name, grace=self.services[name].spec.drain_timeout)
        for name, spec in wanted.items():
            svc = self.services.get(name)
            if svc is not None and (svc.spec.listen, svc.spec.mode) != (spec.listen, spec.mode):
                await self._stop_service(name, grace=0.0)
                svc = None
            if svc is None:
                await self._start_service(spec)
            else:
                svc.update(spec)
        self.config = config
        self.generation += 1
        if self.nft is not None:
            self.nft.schedule()
        if self.role == "control":
            self._publish()

    # ------------------------------------------------------------------ operator actions

    def _svc(self, name: str) -> ServiceRuntime:
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(f'no service "{name}"') from None

    def add_server(self, service: str, server: StaticServer) -> None:
        self._svc(service).add_server(server, ramp=True)

    def remove_server(self, service: str, name: str) -> None:
        self._svc(service).remove_server(name)

    def set_state(self, service: str, name: str, state: AdminState) -> None:
        self._svc(service).set_admin(name, state)

    def set_weight(self, service: str, name: str, weight: int) -> None:
        self._svc(service).set_weight(name, weight)

    # ------------------------------------------------------------------ views

    def describe(self) -> list[dict[str, Any]]:
        docs = [svc.snapshot() for svc in self.services.values()]
        if self.role == "control":
            merged = self._worker_stats()
            for doc in docs:
                st = merged.get(doc["name"], {})
                doc["stats"] = st.get("service", doc["stats"])
                for b in doc["backends"]:
                    if b["name"] in st.get("backends", {}):
                        b["stats"] = st["backends"][b["name"]]
                        b["active"] = st["backends"][b["name"]].get("active", b["active"])
        return docs

    def stats(self) -> dict[str, Any]:
        if self.role == "control":
            return self._worker_stats()
        return {name: svc.stats_document() for name, svc in self.services.items()}

    def _metrics_source(self) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
        states = {name: svc.pool.snapshot() for name, svc in self.services.items()}
        return self.stats(), states

    def metrics_text(self) -> str:
        return generate_latest(self._registry).decode()

    # ------------------------------------------------------------------ workers: control side

    def _publish_soon(self) -> None:
        if not self._publish_pending and self.loop is not None:
            self._publish_pending = True
            self.loop.call_later(0.01, self._publish)

    def _publish(self) -> None:
        self._publish_pending = False
        if self.state_dir is None:
            return
        doc = {
            "generation": self.generation,
            "services": {name: svc.pool.snapshot() for name, svc in self.services.items()},
        }
        _write_json_atomic(self.state_dir / "state.json", doc)

    def _spawn_workers(self) -> None:
        assert self.config_path is not None, "workers need a config file"
        for i in range(self.workers):
            self.worker_procs.append(self._spawn(i))

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "nonstop.lb.worker", "--config", str(self.config_path),
             "--state-dir", str(self.state_dir), "--id", str(i), "--workers", str(self.workers)],
        )  # fmt: skip

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for i, proc in enumerate(self.worker_procs):
                if proc.poll() is not None:
                    log.error("worker %d exited with %s; restarting it", i, proc.returncode)
                    self.worker_procs[i] = self._spawn(i)

    def _worker_stats(self) -> dict[str, Any]:
        docs = []
        if self.state_dir is not None:
            for path in self.state_dir.glob("stats-*.json"):
                try:
                    docs.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
        return merge_snapshots(docs)

    # ------------------------------------------------------------------ workers: worker side

    async def _worker_loop(self) -> None:
        assert self.state_dir is not None
        stats_path = self.state_dir / f"stats-{self.worker_id}.json"
        ticks = 0
        while True:
            await asyncio.sleep(0.1)
            try:
                self._apply_state()
            except Exception:
                log.exception("worker %d: could not apply the shared state", self.worker_id)
            ticks += 1
            if ticks % 10 == 0:
                doc = {name: svc.stats_document() for name, svc in self.services.items()}
                for name, svc in self.services.items():
                    for b in svc.pool.backends.values():
                        doc[name]["backends"].setdefault(b.name, {})["active"] = b.active
                _write_json_atomic(stats_path, doc)

    def _apply_state(self) -> None:
        assert self.state_dir is not None and self.loop is not None
        path = self.state_dir / "state.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == self._applied_mtime:
            return
        self._applied_mtime = mtime
        doc = json.loads(path.read_text())
        generation = doc.get("generation", 0)
        if generation != self.generation and self.config_path is not None:
            # the control process reloaded the file: do the same, then follow its state
            self.generation = generation
            self.loop.create_task(self._worker_reload(generation, doc))
            return
        self._apply_snapshot(doc)

    def _apply_snapshot(self, doc: dict[str, Any]) -> None:
        for name, backends in doc.get("services", {}).items():
            svc = self.services.get(name)
            if svc is not None:
                apply_pool_snapshot(svc, backends)

    async def _worker_reload(self, generation: int, doc: dict[str, Any]) -> None:
        try:
            await self.reload()
        except Exception:
            log.exception("worker %d: reload failed", self.worker_id)
        self.generation = generation  # reload() counted one more; the control process is the authority
        self._apply_snapshot(doc)


def spec_mode(svc: ServiceRuntime) -> str:
    return svc.spec.mode


def apply_pool_snapshot(svc: ServiceRuntime, backends: list[dict[str, Any]]) -> None:
    """Make a worker's pool match the control process's: members, weights, admin, health."""
    pool = svc.pool
    now = svc.loop.time()
    wanted = {b["name"]: b for b in backends}
    for name in [n for n in pool.backends if n not in wanted]:
        svc.remove_server(name)
    for name, b in wanted.items():
        current = pool.backends.get(name)
        if current is not None and f"{current.host}:{current.port}" != b["address"]:
            svc.remove_server(name)
            current = None
        if current is None:
            current = svc.add_server(
                StaticServer(name=name, address=b["address"], weight=b["weight"], backup=b["backup"],
                             max_connections=b["max_connections"]),
                ramp=False,
            )  # fmt: skip
        if current.base_weight != b["weight"]:
            svc.set_weight(name, b["weight"])
        if current.admin.value != b["admin"]:
            svc.set_admin(name, AdminState(b["admin"]))
        serving = Health(b["health"]) in SERVING
        if serving and not current.health.serving and current.health.state is not Health.EJECTED:
            event = pool.force(name, True, now)
        elif not serving and current.health.serving:
            event = pool.force(name, False, now)
        else:
            event = None
        if event is not None:
            svc.on_pool_event(event)


__all__ = ["Balancer", "HealthEvent", "apply_pool_snapshot"]
