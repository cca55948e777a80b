"""A service's backend pool: who may take the next request, and how events change that.

Role: hold every backend's health machine, admin state, outlier tracker, slow-start ramp
and in-flight count; turn check results, passive errors and operator commands into
state; and ``choose`` a backend for a request with the configured algorithm, over the
primaries that can take work — or, only when no primary is serving, over the backups.
``choose`` is on the proxy's hot path, so the candidate lists are cached and rebuilt
only when something changed (or while a slow-start ramp is running).

Result of ``choose``: a Backend, or None with ``last_refusal`` saying why ("no backend
serving" -> 503 right away, "all at max_connections" -> the shell may queue).

Must not: do I/O or read a clock (``now`` is a parameter); the shell owns sockets, timers
and counters of bytes. The shell increments/decrements ``Backend.active`` around work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nonstop.core.lb.algorithms import Balancer
from nonstop.core.lb.health import AdminState, Health, HealthChange, HealthEvent, HealthMachine
from nonstop.core.lb.outlier import OutlierPolicy, OutlierTracker, slow_start_factor


class UnknownBackend(KeyError):
    pass


class Backend:
    """One server of a pool. ``weight`` is the effective weight the algorithms read."""

    __slots__ = (
        "name",
        "host",
        "port",
        "base_weight",
        "weight",
        "backup",
        "max_connections",
        "health",
        "admin",
        "active",
        "outlier",
        "up_since",
        "admin_since",
    )

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        weight: int,
        backup: bool,
        max_connections: int | None,
        health: HealthMachine,
        outlier: OutlierTracker,
        up_since: float,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.base_weight = weight
        self.weight = float(weight)
        self.backup = backup
        self.max_connections = max_connections
        self.health = health
        self.admin = AdminState.READY
        self.active = 0
        self.outlier = outlier
        self.up_since = up_since
        self.admin_since = up_since

    @property
    def takes_new_work(self) -> bool:
        return self.health.serving and self.admin is AdminState.READY and self.base_weight > 0

    @property
    def full(self) -> bool:
        return self.max_connections is not None and self.active >= self.max_connections


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """A change worth logging / acting on (retry in-flight work when it stopped serving)."""

    backend: str
    change: HealthChange


NO_BACKEND = "no backend serving"
ALL_FULL = "all backends at max_connections"


class Pool:
    def __init__(
        self,
        balancer: Balancer,
        *,
        rise: int = 2,
        fall: int = 2,
        slow_start: float = 0.0,
        outlier: OutlierPolicy | None = None,
    ) -> None:
        self.balancer = balancer
        self.rise = rise
        self.fall = fall
        self.slow_start = slow_start
        self.outlier_policy = outlier or OutlierPolicy()
        self.backends: dict[str, Backend] = {}
        self.version = 0
        """Bumped on every change of who may take work (the shells watch it)."""
        self.last_refusal = ""
        self._dirty = True
        self._primary: list[Backend] = []
        self._backup: list[Backend] = []
        self._ramp_until = 0.0
        self._limited = False

    # ------------------------------------------------------------------ membership

    def add(
        self,
        name: str,
        host: str,
        port: int,
        *,
        weight: int = 1,
        backup: bool = False,
        max_connections: int | None = None,
        now: float = 0.0,
        initial: Health = Health.UP,
        ramp: bool = False,
    ) -> Backend:
        """Add a server; ``ramp`` starts its slow start now (servers added at run time)."""
        if name in self.backends:
            raise ValueError(f'backend "{name}" already exists')
        backend = Backend(
            name,
            host,
            port,
            weight=weight,
            backup=backup,
            max_connections=max_connections,
            health=HealthMachine(self.rise, self.fall, initial),
            outlier=OutlierTracker(self.outlier_policy),
            up_since=now if ramp else float("-inf"),
        )
        self.backends[name] = backend
        self._changed()
        return backend

    def remove(self, name: str, now: float = 0.0) -> Backend:
        """Take a server out. The returned Backend counts as draining from ``now``: work
        still on it may finish within the shell's drain deadline."""
        backend = self.get(name)
        del self.backends[name]
        if backend.admin is AdminState.READY:
            backend.admin = AdminState.DRAIN
            backend.admin_since = now
        self._changed()
        return backend

    def get(self, name: str) -> Backend:
        try:
            return self.backends[name]
        except KeyError:
            raise UnknownBackend(name) from None

    # ------------------------------------------------------------------ operator

    def set_admin(self, name: str, state: AdminState, now: float) -> Backend:
        backend = self.get(name)
        if backend.admin is not state:
            if state is AdminState.READY and backend.health.serving:
                backend.up_since = now  # coming back from drain/maint ramps up again
            backend.admin = state
            backend.admin_since = now
            self._changed()
        return backend

    def set_weight(self, name: str, weight: int, now: float) -> Backend:
        if not 0 <= weight <= 1000:
            raise ValueError("weight must be within 0..1000")
        backend = self.get(name)
        backend.base_weight = weight
        self._changed()
        return backend

    # ------------------------------------------------------------------ health events

    def _record(self, backend: Backend, change: HealthChange, now: float) -> PoolEvent | None:
        if change.became_serving:
            backend.up_since = now
        if change.before is not change.after:
            self._changed()
            return PoolEvent(backend.name, change)
        return None

    def check_result(self, name: str, ok: bool, now: float) -> PoolEvent | None:
        backend = self.get(name)
        return self._record(backend, backend.health.check_result(ok), now)

    def force(self, name: str, up: bool, now: float) -> PoolEvent | None:
        backend = self.get(name)
        event = HealthEvent.FORCE_UP if up else HealthEvent.FORCE_DOWN
        return self._record(backend, backend.health.apply(event), now)

    def report_success(self, backend: Backend, now: float) -> None:
        backend.outlier.success(now)

    def report_failure(self, backend: Backend, now: float) -> PoolEvent | None:
        """A connect error / reset / 5xx seen by real traffic; may eject the backend."""
        if backend.name not in self.backends:
            return None
        ejection = backend.outlier.failure(now)
        if ejection is None:
            return None
        return self._record(backend, backend.health.apply(HealthEvent.EJECT), now)

    def tick(self, now: float) -> list[PoolEvent]:
        """End ejections whose time has come. Call a few times a second."""
        events = []
        for backend in self.backends.values():
            if backend.health.state is Health.EJECTED and now >= backend.outlier.ejected_until:
                event = self._record(backend, backend.health.apply(HealthEvent.EJECTION_END), now)
                if event:
                    events.append(event)
        return events

    # ------------------------------------------------------------------ choosing

    def _changed(self) -> None:
        self._dirty = True
        self.version += 1

    def _rebuild(self, now: float) -> None:
        primary: list[Backend] = []
        backup: list[Backend] = []
        ramp_until = 0.0
        limited = False
        for backend in self.backends.values():
            if not backend.takes_new_work:
                continue
            factor = slow_start_factor(now - backend.up_since, self.slow_start)
            backend.weight = backend.base_weight * factor
            if factor < 1.0:
                ramp_until = max(ramp_until, backend.up_since + self.slow_start)
            limited = limited or backend.max_connections is not None
            (backup if backend.backup else primary).append(backend)
        self._primary, self._backup = primary, backup
        self._ramp_until = ramp_until
        self._limited = limited
        self._dirty = False

    def serving(self, now: float) -> list[Backend]:
        """The backends new work would go to: the serving primaries, else the backups."""
        if self._dirty or self._ramp_until:  # while ramping, weights change with time
            self._rebuild(now)
        return self._primary or self._backup

    def choose(self, now: float, key: bytes = b"", exclude: Iterable[str] | None = None) -> Backend | None:
        if self._dirty or self._ramp_until:  # ``serving``, inlined: this runs once per request
            self._rebuild(now)
        candidates = self._primary or self._backup
        if exclude:
            # a retry: backends already tried are out; when that leaves no primary, the
            # backups stand in (as when every primary is down)
            skip = set(exclude)
            candidates = [b for b in self._primary if b.name not in skip]
            if not candidates:
                candidates = [b for b in self._backup if b.name not in skip]
        if not candidates:
            self.last_refusal = NO_BACKEND
            return None
        if self._limited:
            candidates = [b for b in candidates if not b.full]
            if not candidates:
                self.last_refusal = ALL_FULL
                return None
        index = self.balancer.pick(candidates, key)
        if index is None:
            self.last_refusal = NO_BACKEND
            return None
        return candidates[index]

    def snapshot(self) -> list[dict[str, object]]:
        """Plain data for the admin API and the shared state file."""
        return [
            {
                "name": b.name,
                "address": f"{b.host}:{b.port}",
                "health": b.health.state.value,
                "admin": b.admin.value,
                "weight": b.base_weight,
                "effective_weight": round(b.weight, 3),
                "backup": b.backup,
                "max_connections": b.max_connections,
                "active": b.active,
                "serving": b.takes_new_work,
            }
            for b in self.backends.values()
        ]
