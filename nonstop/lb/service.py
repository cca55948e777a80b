"""One balanced service at run time: its listener, pool, upstream connections and timers.

Role: the glue between the pure pool (``nonstop.core.lb.pool``) and the data planes. It
owns the listening socket, the per-backend LIFO keep-alive pools, the in-flight upstream
set, the bounded wait queue, the retry budget and the stats; it dispatches HTTP
exchanges and TCP connections, turns upstream failures into retries or 502/504 answers,
reacts to health changes (in-flight requests on a backend that went down are retried
elsewhere when safe; its idle connections are closed), and runs the sweeper that enforces
every deadline. ``update`` applies a reloaded ServiceSpec in place, so connections that
are open keep working across a reload.

Must not: parse HTTP (http_proxy does), choose backends itself (the pool does), or block.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from nonstop.core.lb.algorithms import make_balancer
from nonstop.core.lb.health import AdminState, Health
from nonstop.core.lb.outlier import OutlierPolicy
from nonstop.core.lb.pool import Backend, Pool, PoolEvent
from nonstop.core.lb.retry import IDEMPOTENT_METHODS, Failure, RetryBudget
from nonstop.core.spec import ServiceSpec, StaticServer
from nonstop.lb.config import parse_address
from nonstop.lb.http_dispatch import HttpDispatch
from nonstop.lb.http_proxy import HttpClient
from nonstop.lb.http_upstream import Exchange, HttpUpstream
from nonstop.lb.stats import BackendStats, ServiceStats
from nonstop.lb.tcp_proxy import TcpClient, TcpUpstream

log = logging.getLogger("nonstop.lb")

SWEEP_INTERVAL = 0.1
UPSTREAM_IDLE_TIMEOUT = 15.0


def _pool_for(spec: ServiceSpec) -> Pool:
    return Pool(
        make_balancer(spec.algorithm.value),
        rise=spec.health.rise,
        fall=spec.health.fall,
        slow_start=spec.slow_start,
        outlier=OutlierPolicy(spec.outlier_errors, spec.outlier_ejection, spec.outlier_max_ejection),
    )


class ServiceRuntime(HttpDispatch):
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
        self.idle: dict[str, list[HttpUpstream]] = {}
        self.busy: set[HttpUpstream] = set()
        self.waiters: deque[Exchange] = deque()
        self.tcp_clients: set[TcpClient] = set()
        self.server: asyncio.base_events.Server | None = None
        self.listening: tuple[str, int] | None = None
        self.listeners: list[Callable[[PoolEvent | None], None]] = []
        """Called on every health/admin change (the nft plane and the state publisher listen)."""
        self._sweeper: asyncio.Task[None] | None = None
        self.clock = loop.time()
        """A coarse clock for deadlines, advanced by the sweeper (saves a clock read per request)."""
        self.client_timeout = spec.client_timeout
        self.server_timeout = spec.server_timeout
        self.access_log = spec.access_log
        """Copies of spec settings the hot path reads (plain attributes; ``update`` refreshes them)."""
        self._budget_counted = 0
        """Requests already credited to the retry budget (the sweeper credits in batches)."""
        self._parkable: set[Backend] = set()
        self._parkable_version = -1
        """Backends whose idle connections may be kept (ready, serving, still members),
        recomputed when the pool's version moves."""
        self._outbox: list[HttpUpstream] = []
        """Upstream connections with request bytes queued for this loop iteration (``send``)."""
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
        while (self.busy or self.tcp_clients or any(c.queue for c in self.clients)) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
        for tcp in list(self.tcp_clients):
            if tcp.transport is not None:
                tcp.transport.close()
        for conns in self.idle.values():
            for up in conns:
                if up.transport is not None:
                    up.transport.close()
        self.idle.clear()

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
        self._close_idle(backend.name)
        # A removed backend is no longer health-checked, so a host that went silent would
        # hold the requests still on it until the server timeout: the unanswered idempotent
        # ones go to another backend now; the rest may finish within the drain deadline
        # (the pool marks a removed backend draining).
        self._abort_in_flight(backend, replayable_only=True)
        self._notify(None)

    def set_admin(self, name: str, state: AdminState) -> Backend:
        backend = self.pool.set_admin(name, state, self.loop.time())
        if state is not AdminState.READY:
            self._close_idle(name)
        if state is AdminState.MAINT:
            self._abort_in_flight(backend)
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
        self.server_timeout = spec.server_timeout
        self.access_log = spec.access_log
        if spec.algorithm != old.algorithm:
            self.pool.balancer = make_balancer(spec.algorithm.value)
            self.uses_key = self.pool.balancer.uses_key
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
            self._close_idle(event.backend)
            backend = self.pool.backends.get(event.backend)
            if backend is not None:
                self._abort_in_flight(backend)
        self._notify(event)

    def _notify(self, event: PoolEvent | None) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the data plane
                log.exception("state listener failed")

    def _close_idle(self, name: str) -> None:
        for up in self.idle.pop(name, []):
            if up.transport is not None:
                up.transport.close()

    def _abort_in_flight(self, backend: Backend, *, replayable_only: bool = False) -> None:
        """The backend stopped serving: requests it has not started answering go elsewhere
        (``core.lb.retry`` decides which are retried; the others get a 502). With
        ``replayable_only``, only those a retry will resend are taken away."""
        for up in [u for u in self.busy if u.backend is backend and not u.received]:
            ex = up.exchange
            if replayable_only and (ex is None or ex.method not in IDEMPOTENT_METHODS or ex.chunks is None):
                continue
            self._detach_failed(up, Failure.BACKEND_DOWN, f"backend {backend.name} went down")

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
                self.clock = now = self.loop.time()
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
        drain = self.spec.drain_timeout
        for up in list(self.busy):
            backend = up.backend
            if now > up.deadline:
                if up.received and up.exchange is not None and up.exchange.answered:
                    self._detach_failed(up, Failure.RESET_AFTER_RESPONSE_STARTED, "backend stalled mid-response")
                else:
                    self._detach_failed(
                        up, Failure.TIMEOUT, f"backend {backend.name} did not answer within {self.spec.server_timeout:g}s"
                    )
            elif backend.admin is not AdminState.READY and now > backend.admin_since + drain:
                self._detach_failed(up, Failure.BACKEND_DOWN, f"backend {backend.name} drain deadline passed")
        for name, idle in list(self.idle.items()):
            keep = [u for u in idle if u.transport is not None and now - u.idle_since < UPSTREAM_IDLE_TIMEOUT]
            for u in idle:
                if u not in keep and u.transport is not None:
                    u.transport.close()
            self.idle[name] = keep
        while self.waiters and now - self.waiters[0].queued_at > self.spec.queue_timeout:
            ex = self.waiters.popleft()
            if not ex.cancelled:
                ex.client.send_error(ex, 503, "waited too long for a free backend slot")
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
