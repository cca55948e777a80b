"""One balanced service at run time: its listener, pool, upstream connections and timers.

Role: the glue between the pure pool (``nonstop.core.lb.pool``) and the data planes. It
owns the listening socket, the retry budget and the stats, and holds the HTTP side's
upstream pool (``http_dispatch.UpstreamPool``: keep-alive connections, in-flight set, wait
queue, retries) as an object of its own; it dispatches TCP connections, reacts to health
changes (in-flight requests on a backend that went down are retried elsewhere when safe;
its idle connections are closed), and runs the sweeper that enforces every deadline.
``update`` applies a reloaded ServiceSpec in place, so connections that are open keep
working across a reload.

The top of the data plane's imports: it builds on http_proxy, http_dispatch, http_upstream
and tcp_proxy, which know it only through Protocols (``HttpService``, ``ServiceEvents``,
``TcpService``); nothing below imports it.

Must not: parse HTTP (http_proxy does), choose backends itself (the pool does), or block.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from nonstop.core.lb.algorithms import make_balancer
from nonstop.core.lb.health import AdminState, Health
from nonstop.core.lb.outlier import OutlierPolicy
from nonstop.core.lb.pool import Backend, Pool, PoolEvent
from nonstop.core.lb.retry import RetryBudget
from nonstop.core.spec import ServiceSpec, StaticServer
from nonstop.lb.config import parse_address
from nonstop.lb.http_dispatch import UpstreamPool
from nonstop.lb.http_proxy import HttpClient
from nonstop.lb.stats import BackendStats, ServiceStats
from nonstop.lb.tcp_proxy import TcpClient, TcpUpstream

log = logging.getLogger("nonstop.lb")

SWEEP_INTERVAL = 0.1


def _pool_for(spec: ServiceSpec) -> Pool:
    return Pool(
        make_balancer(spec.algorithm.value),
        rise=spec.health.rise,
        fall=spec.health.fall,
        slow_start=spec.slow_start,
        outlier=OutlierPolicy(spec.outlier_errors, spec.outlier_ejection, spec.outlier_max_ejection),
    )


class ServiceRuntime:
    def __init__(self, spec: ServiceSpec, loop: asyncio.AbstractEventLoop, *, reuse_port: bool = False) -> None:
        self.spec = spec
        self.loop = loop
        self.reuse_port = reuse_port
        self.pool = _pool_for(spec)
        self.uses_key = self.pool.balancer.uses_key
        self.stats = ServiceStats()
        self.backend_stats: dict[str, BackendStats] = {}
        self.budget = RetryBudget(spec.retry_budget)
        self.clients: set[HttpClient] = set()
        self.tcp_clients: set[TcpClient] = set()
        self.server: asyncio.base_events.Server | None = None
        self.listening: tuple[str, int] | None = None
        self.listeners: list[Callable[[PoolEvent | None], None]] = []
        """Called on every health/admin change (the nft plane and the state publisher listen)."""
        self._sweeper: asyncio.Task[None] | None = None
        self.clock = loop.time()
        """A coarse clock for deadlines, advanced by the sweeper (saves a clock read per request)."""
        self.client_timeout = spec.client_timeout
        """A copy of a spec setting the hot path reads (a plain attribute; ``update`` refreshes it)."""
        self._budget_counted = 0
        """Requests already credited to the retry budget (the sweeper credits in batches)."""
        self.upstreams = UpstreamPool(
            spec, loop, self.pool, stats=self.stats, backend_stats=self.backend_stats, budget=self.budget,
            service=self, uses_key=self.uses_key,
        )
        """The HTTP side's upstream connections; each HttpClient keeps a reference of its own."""
        for server in spec.servers:
            self.add_server(server, ramp=False)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.spec.mode != "nft":
            host, port = parse_address(self.spec.listen)
            factory: Callable[[], asyncio.Protocol]
            factory = (lambda: HttpClient(self)) if self.spec.mode == "http" else (lambda: TcpClient(self))
            self.server = await self.loop.create_server(
                factory, host, port, reuse_address=True, reuse_port=self.reuse_port or None, backlog=4096
            )
            sock = self.server.sockets[0]
            addr = sock.getsockname()
            self.listening = (addr[0], addr[1])
            if self.spec.mode == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sweeper = self.loop.create_task(self._sweep_forever())

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; let open connections finish for ``grace`` seconds, then close them."""
        if self.server is not None:
            self.server.close()
        deadline = self.loop.time() + grace
        while (self.upstreams.busy or self.tcp_clients or any(c.queue for c in self.clients)) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
        for tcp in list(self.tcp_clients):
            if tcp.transport is not None:
                tcp.transport.close()
        self.upstreams.close_all_idle()

    @property
    def address(self) -> str:
        if self.listening is None:
            return self.spec.listen
        return f"{self.listening[0]}:{self.listening[1]}"

    # ------------------------------------------------------------------ membership (admin, reload)

    def add_server(self, server: StaticServer, *, ramp: bool = True) -> Backend:
        host, port = parse_address(server.address)
        backend = self.pool.add(
            server.name,
            host,
            port,
            weight=server.weight,
            backup=server.backup,
            max_connections=server.max_connections,
            now=self.loop.time(),
            initial=Health.UP,
            ramp=ramp,
        )
        self.backend_stats.setdefault(server.name, BackendStats())
        self._notify(None)
        return backend

    def remove_server(self, name: str) -> None:
        backend = self.pool.remove(name, self.loop.time())
        self.upstreams.close_idle(backend.name)
        # A removed backend is no longer health-checked, so a host that went silent would
        # hold the requests still on it until the server timeout: the unanswered idempotent
        # ones go to another backend now; the rest may finish within the drain deadline
        # (the pool marks a removed backend draining).
        self.upstreams.abort_in_flight(backend, replayable_only=True)
        self._notify(None)

    def set_admin(self, name: str, state: AdminState) -> Backend:
        backend = self.pool.set_admin(name, state, self.loop.time())
        if state is not AdminState.READY:
            self.upstreams.close_idle(name)
        if state is AdminState.MAINT:
            self.upstreams.abort_in_flight(backend)
        self._notify(None)
        return backend

    def set_weight(self, name: str, weight: int) -> Backend:
        backend = self.pool.set_weight(name, weight, self.loop.time())
        self._notify(None)
        return backend

    def update(self, spec: ServiceSpec) -> None:
        """Apply a reloaded spec (same name and mode): settings, algorithm, servers."""
        old = self.spec
        self.spec = spec
        self.client_timeout = spec.client_timeout
        if spec.algorithm != old.algorithm:
            self.pool.balancer = make_balancer(spec.algorithm.value)
            self.uses_key = self.pool.balancer.uses_key
        self.upstreams.configure(spec, self.uses_key)
        pool = self.pool
        pool.rise, pool.fall, pool.slow_start = spec.health.rise, spec.health.fall, spec.slow_start
        pool.outlier_policy = OutlierPolicy(spec.outlier_errors, spec.outlier_ejection, spec.outlier_max_ejection)
        self.budget.ratio = spec.retry_budget
        wanted = {s.name: s for s in spec.servers}
        for name in [n for n in pool.backends if n not in wanted]:
            self.remove_server(name)
        for name, server in wanted.items():
            current = pool.backends.get(name)
            host, port = parse_address(server.address)
            if current is not None and (current.host, current.port) != (host, port):
                self.remove_server(name)
                current = None
            if current is None:
                self.add_server(server, ramp=True)
                continue
            current.backup = server.backup
            current.max_connections = server.max_connections
            if current.base_weight != server.weight:
                pool.set_weight(name, server.weight, self.loop.time())
        pool._changed()
        self._notify(None)

    # ------------------------------------------------------------------ health

    def on_check(self, name: str, ok: bool) -> None:
        if name not in self.pool.backends:
            return
        event = self.pool.check_result(name, ok, self.loop.time())
        if event is not None:
            self.on_pool_event(event)

    def on_pool_event(self, event: PoolEvent) -> None:
        change = event.change
        log.info("%s/%s: %s -> %s (%s)", self.spec.name, event.backend, change.before.value, change.after.value, change.event.value)
        if change.stopped_serving:
            self.upstreams.close_idle(event.backend)
            backend = self.pool.backends.get(event.backend)
            if backend is not None:
                self.upstreams.abort_in_flight(backend)
        self._notify(event)

    def _notify(self, event: PoolEvent | None) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the data plane
                log.exception("state listener failed")

    # ------------------------------------------------------------------ TCP

    def tcp_accepted(self, client: TcpClient) -> None:
        self.tcp_clients.add(client)
        self.stats.connections += 1
        self.stats.active_connections += 1
        self.stats.requests += 1
        if len(self.tcp_clients) > self.spec.max_client_connections:
            assert client.transport is not None
            client.transport.abort()
            return
        self._tcp_dispatch(client)

    def _tcp_dispatch(self, client: TcpClient) -> None:
        backend = self.pool.choose(self.loop.time(), client.key if self.uses_key else b"", client.tried or None)
        if backend is None:
            if client.transport is not None:
                client.transport.abort()
            return
        backend.active += 1
        client.backend = backend
        self.backend_stats[backend.name].requests += 1
        self.loop.create_task(self._tcp_connect(client, backend))

    async def _tcp_connect(self, client: TcpClient, backend: Backend) -> None:
        try:
            _, up = await asyncio.wait_for(
                self.loop.create_connection(lambda: TcpUpstream(client), backend.host, backend.port),
                self.spec.connect_timeout,
            )
        except (TimeoutError, OSError):
            backend.active -= 1
            client.backend = None
            self.backend_stats[backend.name].errors += 1
            event = self.pool.report_failure(backend, self.loop.time())
            if event is not None:
                self.on_pool_event(event)
            client.tried.append(backend.name)
            if client.transport is not None and len(client.tried) <= self.spec.retries and self.budget.try_spend():
                self.stats.retries += 1
                self._tcp_dispatch(client)
            elif client.transport is not None:
                client.transport.abort()
            return
        self.backend_stats[backend.name].connections += 1
        client.connected(up)

    def tcp_closed(self, client: TcpClient) -> None:
        if client in self.tcp_clients:
            self.tcp_clients.discard(client)
            self.stats.active_connections -= 1
        if client.backend is not None:
            client.backend.active -= 1
            client.backend = None

    # ------------------------------------------------------------------ deadlines

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.clock = self.upstreams.clock = now = self.loop.time()
                self.sweep(now)
            except Exception:
                log.exception("%s: sweeper failed", self.spec.name)

    def sweep(self, now: float) -> None:
        requests = self.stats.requests
        if requests != self._budget_counted:  # retry budget: deposits for the requests since the last sweep
            self.budget.on_requests(requests - self._budget_counted)
            self._budget_counted = requests
        for client in [c for c in self.clients if c.deadline_kind and now > c.deadline]:
            client.on_deadline(now)
        self.upstreams.sweep(now)
        drain = self.spec.drain_timeout
        for tcp in list(self.tcp_clients):
            b = tcp.backend
            expired = b is not None and b.admin is not AdminState.READY and now > b.admin_since + drain
            if expired and tcp.transport is not None:
                tcp.transport.close()
        for event in self.pool.tick(now):
            self.on_pool_event(event)

    # ------------------------------------------------------------------ views

    def snapshot(self) -> dict[str, Any]:
        backends = self.pool.snapshot()
        for b in backends:
            st = self.backend_stats.get(str(b["name"]))
            if st is not None:
                b["stats"] = st.to_dict()
        return {
            "name": self.spec.name,
            "mode": self.spec.mode,
            "listen": self.address,
            "algorithm": self.spec.algorithm.value,
            "stats": self.stats.to_dict(),
            "backends": backends,
        }

    def stats_document(self) -> dict[str, Any]:
        return {
            "service": self.stats.to_dict(),
            "backends": {name: st.to_dict() for name, st in self.backend_stats.items()},
        }
