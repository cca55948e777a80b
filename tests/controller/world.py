"""A tiny pure world for driving ``decide`` with a fake clock (tests only).

It applies ``decide``'s commands to in-memory records the way the shell's applier does to the
store, plays the agents (a guest assigned to a live host runs there at its epoch on the next
step) and the fence runner (a ``Fence`` succeeds or fails as the test says), and keeps every
command in ``log`` so a test can check the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nonstop.core.controller import commands as c
from nonstop.core.controller.decide import decide
from nonstop.core.controller.memory import ControllerMemory
from nonstop.core.controller.ops import FailoverOp
from nonstop.core.controller.view import (
    ClusterView,
    FenceOutcome,
    GuestView,
    HostView,
    ObservedGuest,
    PendingIntent,
)
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.intents import IntentOutcome, IntentRequest
from nonstop.core.spec import ClusterSpec


def spec(hosts: int = 3, api: int = 3, web: int = 0, memory: str = "2GiB", failback: str = "auto",
         stability: str = "30s") -> ClusterSpec:
    guests: list[dict[str, object]] = [{"name": "api", "replicas": api, "memory": "256MiB", "spread": "soft",
                                        "nics": [{"network": "lan"}]}]
    if web:
        guests.append({"name": "web", "kind": "vm", "replicas": web, "memory": "256MiB", "nics": [{"network": "lan"}]})
    return ClusterSpec.model_validate({
        "cluster": "c",
        "hosts": [{"name": f"h{i}", "cpus": 4, "memory": memory} for i in range(1, hosts + 1)],
        "networks": [{"name": "lan", "subnet": "198.18.10.0/24"}],
        "guests": guests,
        "services": [{"name": "api", "listen": "127.0.0.1:8080", "backends": {"group": "api", "port": 80}}],
        "policies": {"ha": {"host_failures_to_tolerate": 0, "failback": failback, "failback_stability": stability}},
    })


@dataclass
class World:
    spec: ClusterSpec
    now: float = 1000.0
    liveness: dict[str, str] = field(default_factory=dict)
    desired: dict[str, GuestDefinition] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    observed: dict[str, ObservedGuest] = field(default_factory=dict)
    failovers: dict[str, FailoverOp] = field(default_factory=dict)
    fence_results: dict[str, FenceOutcome] = field(default_factory=dict)
    maintenance: dict[str, bool] = field(default_factory=dict)
    intents: dict[str, IntentRequest] = field(default_factory=dict)
    outcomes: dict[str, IntentOutcome] = field(default_factory=dict)
    migrations: dict[str, str] = field(default_factory=dict)
    memory: ControllerMemory = field(default_factory=ControllerMemory)
    fence_works: bool = True
    agents_run: bool = True
    log: list[tuple[float, c.Command]] = field(default_factory=list)
    revision: int = 1

    def __post_init__(self) -> None:
        for h in self.spec.hosts:
            self.liveness.setdefault(h.name, "up")

    # ------------------------------------------------------------------ the view

    def view(self) -> ClusterView:
        hosts = {h.name: HostView(h.name, self.liveness[h.name], maintenance=h.name in self.maintenance,
                                  evacuate=self.maintenance.get(h.name, True)) for h in self.spec.hosts}
        names = set(self.desired) | set(self.observed) | set(self.epochs)
        guests = {}
        for g in names:
            d = self.desired.get(g)
            step = self.migrations.get(d.migration_id) if d is not None and d.migration_id else None
            guests[g] = GuestView(g, d, self.revisions.get(g, 0), self.observed.get(g), self.epochs.get(g, 0),
                                  migration_step=step)
        pending = tuple(PendingIntent(r, self.outcomes.get(i)) for i, r in sorted(self.intents.items())
                        if i not in self.outcomes or not self.outcomes[i].final)
        ready = frozenset((g, self.epochs.get(g, 0)) for g in self.desired)
        return ClusterView(self.spec, self.now, hosts, guests, dict(self.failovers), dict(self.fence_results),
                           pending, ready, leading_since=0.0, id_seed=f"s{int(self.now * 1000)}")

    # ------------------------------------------------------------------ one step

    def step(self, dt: float = 0.2) -> list[c.Command]:
        decision = decide(self.view(), self.memory)
        self.memory = decision.memory
        for cmd in decision.commands:
            self.log.append((self.now, cmd))
            self._apply(cmd)
        self._agents()
        self.now += dt
        return list(decision.commands)

    def run(self, seconds: float, dt: float = 0.2) -> list[c.Command]:
        out = []
        end = self.now + seconds
        while self.now < end:
            out.extend(self.step(dt))
        return out

    def _bump(self, guest: str) -> None:
        self.revision += 1
        self.revisions[guest] = self.revision

    def _apply(self, cmd: c.Command) -> None:
        if isinstance(cmd, c.PlaceGuest):
            assert cmd.guest not in self.desired, f"placed twice: {cmd}"
            group = next(g for g in self.spec.guests if cmd.guest in g.guest_names())
            self.desired[cmd.guest] = GuestDefinition.from_group(group, name=cmd.guest, cluster="c", host=cmd.host,
                                                                 addresses=["198.18.10.5/24"], fencing_epoch=cmd.epoch)
            self.epochs[cmd.guest] = cmd.epoch
            self._bump(cmd.guest)
        elif isinstance(cmd, c.MoveGuest):
            d = self.desired[cmd.guest]
            self.desired[cmd.guest] = d.with_changes(host=cmd.target, fencing_epoch=cmd.epoch, migrate_to=None,
                                                     migration_id=None, **dict(cmd.changes))
            self.epochs[cmd.guest] = cmd.epoch
            self._bump(cmd.guest)
        elif isinstance(cmd, c.RequestMigration):
            if self.revisions.get(cmd.guest) == cmd.revision:
                self.desired[cmd.guest] = self.desired[cmd.guest].with_changes(migrate_to=cmd.target,
                                                                               migration_id=cmd.migration_id)
                self._bump(cmd.guest)
        elif isinstance(cmd, c.CompleteMigration):
            if self.revisions.get(cmd.guest) == cmd.revision:
                self.desired[cmd.guest] = self.desired[cmd.guest].with_changes(host=cmd.target, migrate_to=None,
                                                                               migration_id=None)
                self._bump(cmd.guest)
        elif isinstance(cmd, c.ClearMigration):
            if self.revisions.get(cmd.guest) == cmd.revision:
                self.desired[cmd.guest] = self.desired[cmd.guest].with_changes(migrate_to=None, migration_id=None)
                self._bump(cmd.guest)
        elif isinstance(cmd, c.RemoveGuest):
            self.desired.pop(cmd.guest, None)
        elif isinstance(cmd, c.SaveFailover):
            self.failovers[cmd.op.op_id] = cmd.op
        elif isinstance(cmd, c.Fence):
            self.fence_results[cmd.op_id] = FenceOutcome(cmd.attempt, self.fence_works, "test", "off" if
                                                         self.fence_works else "error", "", 0.1)
        elif isinstance(cmd, c.SetHostState):
            if cmd.state == "maintenance":
                self.maintenance[cmd.host] = cmd.evacuate
            else:
                self.maintenance.pop(cmd.host, None)
        elif isinstance(cmd, c.AnswerIntent):
            self.outcomes[cmd.intent_id] = IntentOutcome(id=cmd.intent_id, status=cmd.status,  # type: ignore[arg-type]
                                                         message=cmd.message, updated_at=self.now,
                                                         target=cmd.target, source=cmd.source, epoch=cmd.epoch)

    def _agents(self) -> None:
        """Agents: a guest assigned to a live host runs there; a migration hands over at once."""
        if not self.agents_run:
            return
        for g, d in self.desired.items():
            if d.migrate_to and d.migration_id and self.liveness.get(d.host) == "up":
                self.migrations[d.migration_id] = "done"
                self.observed[g] = ObservedGuest(d.migrate_to, "running", self.epochs.get(g))
            elif self.liveness.get(d.host) in ("up", "link-degraded"):
                self.observed[g] = ObservedGuest(d.host, "running", self.epochs.get(g))
        for g in list(self.observed):
            o = self.observed[g]
            if self.liveness.get(o.host or "") not in ("up", "link-degraded"):
                self.observed[g] = replace(o, state="unknown")

    # ------------------------------------------------------------------ queries

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [cmd for _, cmd in self.log if isinstance(cmd, kind)]

    def events(self, kind: str) -> list[c.Emit]:
        return [cmd for _, cmd in self.log if isinstance(cmd, c.Emit) and cmd.kind == kind]

    def hosts_of(self) -> dict[str, str]:
        return {g: d.host for g, d in self.desired.items()}

    def submit(self, request: IntentRequest) -> None:
        self.intents[request.id] = request
