"""The HTTP half of a balanced service at run time: the upstream pool, dispatch and retries.

Role: ``UpstreamPool`` is the object a ``ServiceRuntime`` (nonstop/lb/service.py) holds for
its L7 side: it picks a backend through the (pure) backend pool for each exchange, takes a
pooled keep-alive connection (LIFO) or opens one, sends the request, parks the connection
when the response is done, records stats, and turns upstream failures into retries on
another backend or 502/504 answers as ``core.lb.retry`` decides. Requests wait in a bounded
queue while every backend is at its connection limit. Its ``sweep`` enforces the upstream
deadlines (server timeout, drain deadline, idle keep-alive age, queue wait).

Imports run one way — http_head ← http_upstream ← http_proxy, http_upstream ← http_dispatch,
and service over all of them: the pool knows the service only through ``ServiceEvents`` (one
callback) and the client connection only through ``http_upstream.ClientSide``. Each client
connection keeps a reference to this object (``HttpClient.upstreams``), so a request costs
one attribute load and a plain method call to reach it, as when this was a mixin.

Must not: parse HTTP (http_proxy / http_upstream do), choose backends itself (the pool
does), block, or import the client side (http_proxy) or the service.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections import deque
from time import perf_counter
from typing import Protocol

from nonstop.core.lb.health import SERVING, AdminState
from nonstop.core.lb.pool import ALL_FULL, Backend, Pool, PoolEvent
from nonstop.core.lb.retry import IDEMPOTENT_METHODS, Failure, RetryBudget, decide_retry
from nonstop.core.spec import ServiceSpec
from nonstop.lb.http_upstream import PAUSE_UNSENT, Exchange, HttpUpstream
from nonstop.lb.stats import LATENCY_BUCKETS, BackendStats, ServiceStats

log = logging.getLogger("nonstop.lb")
access_log = logging.getLogger("nonstop.lb.access")

NON_IDEMPOTENT_MAX_IDLE_AGE = 2.0
"""A POST never goes on a pooled connection idle longer than this (it could be half-closed)."""
MAX_IDLE_PER_BACKEND = 512
UPSTREAM_IDLE_TIMEOUT = 15.0
"""A parked keep-alive connection unused this long is closed by the sweeper."""


class ServiceEvents(Protocol):
    """What the upstream pool calls back on the service that owns it."""

    def on_pool_event(self, event: PoolEvent) -> None:
        """A backend's health changed because of traffic (a failure or an outlier ejection)."""


class UpstreamPool:
    """Upstream connections of one HTTP service: idle (per backend, LIFO), busy, and the wait queue."""

    spec: ServiceSpec
    uses_key: bool
    server_timeout: float
    access_log: bool
    """Copies of settings the hot path reads (plain attributes; ``configure`` refreshes them)."""

    def __init__(
        self,
        spec: ServiceSpec,
        loop: asyncio.AbstractEventLoop,
        pool: Pool,
        *,
        stats: ServiceStats,
        backend_stats: dict[str, BackendStats],
        budget: RetryBudget,
        service: ServiceEvents,
        uses_key: bool,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.stats = stats
        self.backend_stats = backend_stats
        self.budget = budget
        self.on_pool_event = service.on_pool_event
        """Bound once: a failure reports to the service with no lookup through it."""
        self.idle: dict[str, list[HttpUpstream]] = {}
        self.busy: set[HttpUpstream] = set()
        self.waiters: deque[Exchange] = deque()
        self.clock = loop.time()
        """The service's coarse clock, advanced by its sweeper (saves a clock read per request)."""
        self._parkable: set[Backend] = set()
        self._parkable_version = -1
        """Backends whose idle connections may be kept (ready, serving, still members),
        recomputed when the pool's version moves."""
        self._outbox: list[HttpUpstream] = []
        """Upstream connections with request bytes queued for this loop iteration (``send``)."""
        self.configure(spec, uses_key)

    def configure(self, spec: ServiceSpec, uses_key: bool) -> None:
        """Take a reloaded spec's settings (plain attributes: the hot path reads them)."""
        self.spec = spec
        self.uses_key = uses_key
        self.server_timeout = spec.server_timeout
        self.access_log = spec.access_log

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, ex: Exchange) -> None:
        pool = self.pool
        now = self.clock
        backend = pool.choose(now, ex.client.client_ip if self.uses_key else b"", ex.tried)
        if backend is None:
            self._no_backend(ex, now)
            return
        backend.active += 1
        ex.backend = backend
        name = backend.name
        self.backend_stats[name].requests += 1
        ex.started = perf_counter()  # uvloop's loop.time() has millisecond resolution
        idle = self.idle.get(name)
        while idle:
            up = idle.pop()  # LIFO: the connection used last is the one surely still open
            t = up.transport
            if t is None or t.is_closing():
                continue
            if now - up.idle_since > NON_IDEMPOTENT_MAX_IDLE_AGE and ex.method not in IDEMPOTENT_METHODS:
                t.close()
                continue
            self._attach(ex, up, now)
            return
        self.loop.create_task(self._connect(ex, backend))

    def _no_backend(self, ex: Exchange, now: float) -> None:
        pool = self.pool
        if pool.last_refusal == ALL_FULL and len(self.waiters) < self.spec.queue_size:
            ex.queued_at = now
            self.waiters.append(ex)
            return
        if ex.tried:
            ex.client.send_error(ex, 502, f"no backend could answer (tried {', '.join(ex.tried)})")
        elif pool.last_refusal == ALL_FULL:
            ex.client.send_error(ex, 503, "every backend is at its connection limit and the queue is full")
        else:
            ex.client.send_error(ex, 503, f"no backend of service {self.spec.name} is serving")

    async def _connect(self, ex: Exchange, backend: Backend) -> None:
        try:
            _, up = await asyncio.wait_for(
                self.loop.create_connection(lambda: HttpUpstream(self, backend), backend.host, backend.port),
                self.spec.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            if not ex.cancelled and ex.backend is backend:
                self._failed(ex, backend, Failure.CONNECT, f"connect to {backend.name} failed: {exc or 'timeout'}")
            return
        self.backend_stats[backend.name].connections += 1
        if ex.cancelled or ex.backend is not backend:
            self._park(up, self.loop.time())
            return
        self._attach(ex, up, self.loop.time())

    def _attach(self, ex: Exchange, up: HttpUpstream, now: float) -> None:
        """Send ``ex`` on ``up`` (fresh, or parked clean by ``exchange_done``)."""
        up.exchange = ex
        ex.upstream = up
        up.deadline = now + self.server_timeout
        self.busy.add(up)
        if ex.sent:  # a retry: replay everything received so far
            data = ex.head + b"".join(ex.chunks or ())
        elif ex.unsent:
            data = ex.head + b"".join(ex.unsent)
            ex.unsent = ()
            ex.unsent_bytes = 0
        else:
            data = ex.head
        ex.sent = True
        self.send(up, data)
        client = ex.client
        if client.paused:
            client.resume(PAUSE_UNSENT)
        if client.write_paused or up.reading_paused:
            up.set_reading(not client.write_paused)

    def send(self, up: HttpUpstream, data: bytes) -> None:
        """Queue request bytes for ``up``; every queued send goes out when this loop iteration's
        callbacks are done. Why: a backend on the same core is woken by each send and preempts
        the proxy — one context switch pair per request when sending at once, one per batch
        (every request read in this iteration) when sending afterwards. Bytes for one
        connection keep their order (a body streamed behind its head joins the queue)."""
        if up.pending is not None:
            up.pending += data
            return
        up.pending = data
        out = self._outbox
        out.append(up)
        if len(out) == 1:
            self.loop.call_soon(self._send_all)

    def _send_all(self) -> None:
        out, self._outbox = self._outbox, []
        for up in out:
            data, up.pending = up.pending, None
            t = up.transport
            if t is not None and data:
                t.write(data)

    def _park(self, up: HttpUpstream, now: float) -> None:
        backend = up.backend
        if up.reading_paused:
            up.set_reading(True)  # an idle connection must notice the backend closing it
        pool = self.pool
        if self._parkable_version != pool.version:
            self._parkable = {
                b for b in pool.backends.values() if b.admin is AdminState.READY and b.health.state in SERVING
            }
            self._parkable_version = pool.version
        t = up.transport
        if up.reusable and t is not None and backend in self._parkable and not t.is_closing():
            idle = self.idle.get(backend.name)
            if idle is None:
                idle = self.idle[backend.name] = []
            if len(idle) < MAX_IDLE_PER_BACKEND:
                up.idle_since = now
                idle.append(up)
                return
        if t is not None:
            t.close()

    # ------------------------------------------------------------------ upstream callbacks (UpstreamEvents)

    def exchange_done(self, up: HttpUpstream, ex: Exchange) -> None:
        up.exchange = None
        ex.upstream = None
        self.busy.discard(up)
        backend = up.backend
        backend.active -= 1
        ex.backend = None
        now = self.clock
        status = up.status
        self.stats.by_class[status // 100 if 0 < status < 600 else 0] += 1
        bst = self.backend_stats.get(backend.name)
        if bst is not None:
            latency = perf_counter() - ex.started
            bst.buckets[bisect_left(LATENCY_BUCKETS, latency)] += 1
            bst.latency_sum += latency
        if status >= 500:
            if bst is not None:
                bst.errors += 1
            event = self.pool.report_failure(backend, now)
            if event is not None:
                self.on_pool_event(event)
        elif backend.outlier.streak or backend.outlier.level:
            self.pool.report_success(backend, now)
        if ex.complete:
            # ready for the next exchange (head_buf, parser and framing are clean after a
            # finished response; a connection that is not never gets here reusable)
            up.head_done = up.received = up.done = False
            up.parser = None
            up.remaining = 0
            self._park(up, now)
        elif up.transport is not None:
            up.transport.close()
        if self.access_log:
            access_log.info(
                "%s %s %s %d %s %.1fms", self.spec.name, ex.client.client_ip.decode(), ex.method.decode(), status,
                backend.name, (perf_counter() - ex.started) * 1000,
            )  # fmt: skip
        ex.client.exchange_finished(ex)
        if self.waiters:
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self.waiters:
            ex = self.waiters.popleft()
            if not ex.cancelled:
                self.dispatch(ex)
                return

    def detach_failed(self, up: HttpUpstream, failure: Failure, detail: str) -> None:
        """Take ``up`` out of service (aborted) and fail or retry the exchange it carried."""
        ex = up.exchange
        up.exchange = None
        up.reusable = False
        self.busy.discard(up)
        if up.transport is not None:
            up.transport.abort()
        if ex is not None:
            ex.upstream = None
            self._failed(ex, up.backend, failure, detail)

    def upstream_failed(self, up: HttpUpstream, failure: Failure, detail: str) -> None:
        self.detach_failed(up, failure, detail)

    def upstream_lost(self, up: HttpUpstream, exc: Exception | None) -> None:
        self.busy.discard(up)
        ex = up.exchange
        if ex is None:
            idle = self.idle.get(up.backend.name)
            if idle and up in idle:
                idle.remove(up)
            return
        up.exchange = None
        ex.upstream = None
        if up.head_done and not up.framed and exc is None:
            up.reusable = False
            self.exchange_done(up, ex)  # close-delimited body ended by EOF
            return
        failure = Failure.RESET_AFTER_RESPONSE_STARTED if up.received else Failure.RESET_BEFORE_RESPONSE
        self._failed(ex, up.backend, failure, f"backend {up.backend.name} closed the connection")

    def _failed(self, ex: Exchange, backend: Backend, failure: Failure, detail: str) -> None:
        if ex.backend is backend:
            backend.active -= 1
            ex.backend = None
        now = self.loop.time()
        bst = self.backend_stats.get(backend.name)
        if failure is not Failure.BACKEND_DOWN:  # taken away by us (down/maint/drain), not its fault
            if bst is not None:
                bst.errors += 1
            event = self.pool.report_failure(backend, now)
            if event is not None:
                self.on_pool_event(event)
        if ex.cancelled:
            return
        decision = decide_retry(
            ex.method,
            failure,
            sent_anything=ex.sent,
            replayable=ex.chunks is not None,
            retries_done=len(ex.tried),
            max_retries=self.spec.retries,
            budget_ok=self.budget.tokens >= 1.0,
        )
        ex.tried += (backend.name,)
        if decision.retry and not ex.answered:
            self.budget.try_spend()
            self.stats.retries += 1
            if bst is not None:
                bst.retries_from += 1
            self.dispatch(ex)
            return
        log.debug("%s: not retried: %s (%s)", self.spec.name, decision.reason, detail)
        client = ex.client
        if ex.answered:
            client.closing = True
            if client.transport is not None:
                client.transport.abort()
            return
        status = 504 if failure is Failure.TIMEOUT else 502
        client.send_error(ex, status, detail)

    def cancel(self, ex: Exchange) -> None:
        """The client went away: free what ``ex`` holds."""
        if ex.queued_at:
            try:
                self.waiters.remove(ex)
            except ValueError:
                pass
        up = ex.upstream
        if up is not None:
            up.exchange = None
            ex.upstream = None
            self.busy.discard(up)
            if up.transport is not None:
                up.transport.abort()
        if ex.backend is not None:
            ex.backend.active -= 1
            ex.backend = None
            if self.waiters:
                self._wake_waiter()

    # ------------------------------------------------------------------ health, deadlines, shutdown

    def close_idle(self, name: str) -> None:
        """Close the parked connections to backend ``name`` (it stopped serving or left)."""
        for up in self.idle.pop(name, []):
            if up.transport is not None:
                up.transport.close()

    def abort_in_flight(self, backend: Backend, *, replayable_only: bool = False) -> None:
        """The backend stopped serving: requests it has not started answering go elsewhere
        (``core.lb.retry`` decides which are retried; the others get a 502). With
        ``replayable_only``, only those a retry will resend are taken away."""
        for up in [u for u in self.busy if u.backend is backend and not u.received]:
            ex = up.exchange
            if replayable_only and (ex is None or ex.method not in IDEMPOTENT_METHODS or ex.chunks is None):
                continue
            self.detach_failed(up, Failure.BACKEND_DOWN, f"backend {backend.name} went down")

    def sweep(self, now: float) -> None:
        """Enforce the upstream deadlines: server timeout, drain deadline, idle age, queue wait."""
        spec = self.spec
        drain = spec.drain_timeout
        for up in list(self.busy):
            backend = up.backend
            if now > up.deadline:
                if up.received and up.exchange is not None and up.exchange.answered:
                    self.detach_failed(up, Failure.RESET_AFTER_RESPONSE_STARTED, "backend stalled mid-response")
                else:
                    self.detach_failed(
                        up, Failure.TIMEOUT, f"backend {backend.name} did not answer within {spec.server_timeout:g}s"
                    )
            elif backend.admin is not AdminState.READY and now > backend.admin_since + drain:
                self.detach_failed(up, Failure.BACKEND_DOWN, f"backend {backend.name} drain deadline passed")
        for name, idle in list(self.idle.items()):
            keep = [u for u in idle if u.transport is not None and now - u.idle_since < UPSTREAM_IDLE_TIMEOUT]
            for u in idle:
                if u not in keep and u.transport is not None:
                    u.transport.close()
            self.idle[name] = keep
        while self.waiters and now - self.waiters[0].queued_at > spec.queue_timeout:
            ex = self.waiters.popleft()
            if not ex.cancelled:
                ex.client.send_error(ex, 503, "waited too long for a free backend slot")

    def close_all_idle(self) -> None:
        """Close every parked connection (the service is stopping)."""
        for conns in self.idle.values():
            for up in conns:
                if up.transport is not None:
                    up.transport.close()
        self.idle.clear()
