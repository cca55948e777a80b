"""The rolling patch as a persisted step machine (pure): per-host steps, batches, resume, abort.

Role: a rollout is data — ``Rollout`` (target level, batches of hosts, one ``HostProgress`` per
host) — and ``transition(rollout, observation, now) -> (rollout, actions)`` is the only way it
changes. Every host walks the same table::

    pending → precheck → enter-maintenance → drain → evacuate → patch → await-agent →
    postcheck → exit-maintenance → failback → done
    any active step --failed--> failed --resume--> (the step that failed)
    pending | any active step | failed --abort--> aborted

A ``Moved`` observation records a guest move the moment it is asked for (the step does not
change): a patcher killed between asking for a live migration and seeing it finish still knows,
after the resume, what it moved and so what to fail back.

Batches run one after the other: a batch starts only when every host of the previous batch is
``done``; a ``failed`` host stops the rollout (no further batch starts; hosts of the same batch
already under way finish their steps). The executor (nonstop/patching) persists the rollout after
every transition, so a killed patcher resumes at the step it was in: every step's procedure is
idempotent.

Must not: read a clock (``now`` is a parameter), touch the store, or talk to hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any


class Step(str, Enum):
    PENDING = "pending"
    PRECHECK = "precheck"
    ENTER_MAINTENANCE = "enter-maintenance"
    DRAIN = "drain"
    EVACUATE = "evacuate"
    PATCH = "patch"
    AWAIT_AGENT = "await-agent"
    POSTCHECK = "postcheck"
    EXIT_MAINTENANCE = "exit-maintenance"
    FAILBACK = "failback"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


class Outcome(str, Enum):
    START = "start"
    """The rollout lets a pending host begin (its batch is current)."""
    OK = "ok"
    FAILED = "failed"
    RESUME = "resume"
    ABORT = "abort"


ACTIVE_ORDER: tuple[Step, ...] = (
    Step.PRECHECK, Step.ENTER_MAINTENANCE, Step.DRAIN, Step.EVACUATE, Step.PATCH, Step.AWAIT_AGENT,
    Step.POSTCHECK, Step.EXIT_MAINTENANCE, Step.FAILBACK,
)
ACTIVE = frozenset(ACTIVE_ORDER)
FINAL = frozenset({Step.DONE, Step.ABORTED})
RETRY = "retry"
"""Table marker: ``failed --resume-->`` goes back to the step that failed."""


def _table() -> dict[Step, dict[Outcome, Step | str]]:
    table: dict[Step, dict[Outcome, Step | str]] = {
        Step.PENDING: {Outcome.START: Step.PRECHECK, Outcome.ABORT: Step.ABORTED},
        Step.FAILED: {Outcome.RESUME: RETRY, Outcome.ABORT: Step.ABORTED},
        Step.DONE: {},
        Step.ABORTED: {},
    }
    for step, after in zip(ACTIVE_ORDER, (*ACTIVE_ORDER[1:], Step.DONE), strict=True):
        table[step] = {Outcome.OK: after, Outcome.FAILED: Step.FAILED, Outcome.ABORT: Step.ABORTED}
    return table


TRANSITIONS: dict[Step, dict[Outcome, Step | str]] = _table()


class IllegalTransition(Exception):
    def __init__(self, host: str, step: Step, outcome: Outcome) -> None:
        super().__init__(f"patch rollout: host {host} has no step from {step.value} on {outcome.value}")
        self.host, self.step, self.outcome = host, step, outcome


@dataclass(frozen=True)
class HostProgress:
    host: str
    step: Step = Step.PENDING
    failed_step: Step | None = None
    error: str | None = None
    output: str | None = None
    level_before: str | None = None
    level_after: str | None = None
    step_started_at: float | None = None
    durations: tuple[tuple[str, float], ...] = ()
    """(step, seconds) for every step finished, in order (a retried step appears again)."""
    moves: tuple[tuple[str, str, str, str], ...] = ()
    """(guest, from, to, how) for every guest moved off or back (how: live | cold)."""
    attempt: int = 0
    """Patch attempts made (the agent's request records carry it, so a resume is a new request)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host, "step": self.step.value,
            "failed_step": self.failed_step.value if self.failed_step else None, "error": self.error,
            "output": self.output, "level_before": self.level_before, "level_after": self.level_after,
            "step_started_at": self.step_started_at, "durations": [list(d) for d in self.durations],
            "moves": [list(m) for m in self.moves], "attempt": self.attempt,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostProgress:
        return cls(
            host=str(data["host"]), step=Step(data.get("step", "pending")),
            failed_step=Step(data["failed_step"]) if data.get("failed_step") else None, error=data.get("error"),
            output=data.get("output"), level_before=data.get("level_before"), level_after=data.get("level_after"),
            step_started_at=data.get("step_started_at"),
            durations=tuple((str(s), float(d)) for s, d in data.get("durations", [])),
            moves=tuple((str(a), str(b), str(c), str(d)) for a, b, c, d in data.get("moves", [])),
            attempt=int(data.get("attempt", 0)),
        )


class RolloutStatus(str, Enum):
    RUNNING = "running"
    FAILED = "failed"
    ABORTED = "aborted"
    COMPLETE = "complete"


@dataclass(frozen=True)
class Rollout:
    rollout_id: str
    target: str
    batches: tuple[tuple[str, ...], ...]
    hosts: dict[str, HostProgress]
    command: str | None = None
    restart_agent: bool = True
    timeout: float = 120.0
    max_unavailable: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    status: RolloutStatus = RolloutStatus.RUNNING

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "patch-rollout", "rollout_id": self.rollout_id, "target": self.target,
            "batches": [list(b) for b in self.batches], "hosts": {h: p.to_dict() for h, p in self.hosts.items()},
            "command": self.command, "restart_agent": self.restart_agent, "timeout": self.timeout,
            "max_unavailable": self.max_unavailable, "created_at": self.created_at, "updated_at": self.updated_at,
            "status": self.status.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        return cls(
            rollout_id=str(data["rollout_id"]), target=str(data["target"]),
            batches=tuple(tuple(b) for b in data["batches"]),
            hosts={h: HostProgress.from_dict(p) for h, p in data["hosts"].items()},
            command=data.get("command"), restart_agent=bool(data.get("restart_agent", True)),
            timeout=float(data.get("timeout", 120.0)), max_unavailable=int(data.get("max_unavailable", 1)),
            created_at=float(data.get("created_at", 0.0)), updated_at=float(data.get("updated_at", 0.0)),
            status=RolloutStatus(data.get("status", "running")),
        )

    def current_batch(self) -> int | None:
        """Index of the first batch with a host not done (None when every host is done)."""
        for i, batch in enumerate(self.batches):
            if any(self.hosts[h].step is not Step.DONE for h in batch):
                return i
        return None

    def active_hosts(self) -> list[str]:
        return [h for b in self.batches for h in b if self.hosts[h].step in ACTIVE]

    def failed_hosts(self) -> list[str]:
        return [h for b in self.batches for h in b if self.hosts[h].step is Step.FAILED]


# --------------------------------------------------------------------- observations and actions


@dataclass(frozen=True)
class StepResult:
    """The executor finished (or failed) ``step`` on ``host``."""

    host: str
    step: Step
    ok: bool
    error: str | None = None
    output: str | None = None
    level_before: str | None = None
    level_after: str | None = None
    moves: tuple[tuple[str, str, str, str], ...] = ()
    attempt: int | None = None


@dataclass(frozen=True)
class Moved:
    """During ``step`` on ``host``, the executor asked for ``move`` (guest, from, to, how)."""

    host: str
    step: Step
    move: tuple[str, str, str, str]


@dataclass(frozen=True)
class Tick:
    """Nothing happened but time: start what may start."""


@dataclass(frozen=True)
class Resume:
    """The operator fixed what failed: failed hosts go back to the step that failed."""


@dataclass(frozen=True)
class Abort:
    """End the rollout: hosts not yet finished are aborted (the executor leaves the cluster serving)."""


Observation = StepResult | Moved | Tick | Resume | Abort


@dataclass(frozen=True)
class RunStep:
    host: str
    step: Step


@dataclass(frozen=True)
class Finished:
    status: RolloutStatus
    reason: str


Action = RunStep | Finished


class StaleResult(Exception):
    """A result for a step the host is no longer in (a duplicate after a resume): ignored by callers."""


def _move(progress: HostProgress, outcome: Outcome, now: float) -> HostProgress:
    row = TRANSITIONS[progress.step]
    if outcome not in row:
        raise IllegalTransition(progress.host, progress.step, outcome)
    nxt = row[outcome]
    durations = progress.durations
    if progress.step in ACTIVE and progress.step_started_at is not None and outcome is not Outcome.ABORT:
        durations = (*durations, (progress.step.value, round(now - progress.step_started_at, 3)))
    if nxt == RETRY:
        assert progress.failed_step is not None
        return replace(progress, step=progress.failed_step, failed_step=None, error=None, step_started_at=now,
                       durations=durations)
    assert isinstance(nxt, Step)
    failed_step = progress.step if nxt is Step.FAILED else progress.failed_step
    return replace(progress, step=nxt, failed_step=failed_step, step_started_at=now if nxt in ACTIVE else None,
                   durations=durations)


def _with_moves(moves: tuple[tuple[str, str, str, str], ...],
                new: tuple[tuple[str, str, str, str], ...]) -> tuple[tuple[str, str, str, str], ...]:
    """``moves`` plus those of ``new`` not recorded yet (a move recorded when asked for is reported
    again with the step's result, and a resumed step may ask for the same move again)."""
    out = list(moves)
    for move in new:
        if move not in out:
            out.append(move)
    return tuple(out)


def _failure(progress: HostProgress) -> str:
    step = progress.failed_step.value if progress.failed_step is not None else "?"
    return f"{progress.host} at {step}: {progress.error}"


def _status(rollout: Rollout) -> RolloutStatus:
    steps = [p.step for p in rollout.hosts.values()]
    if all(s is Step.DONE for s in steps):
        return RolloutStatus.COMPLETE
    if any(s is Step.ABORTED for s in steps) and not any(s in ACTIVE for s in steps):
        return RolloutStatus.ABORTED
    if any(s is Step.FAILED for s in steps):
        return RolloutStatus.FAILED
    return RolloutStatus.RUNNING


def transition(rollout: Rollout, obs: Observation, now: float) -> tuple[Rollout, tuple[Action, ...]]:
    """Apply one observation; then start the hosts that may start. Returns the new rollout and the
    steps the executor must run now (one ``RunStep`` per host whose step changed) or ``Finished``."""
    hosts = dict(rollout.hosts)
    actions: list[Action] = []
    if isinstance(obs, StepResult):
        progress = hosts[obs.host]
        if progress.step is not obs.step:
            raise StaleResult(f"{obs.host}: result for {obs.step.value}, host is at {progress.step.value}")
        progress = replace(
            progress,
            error=obs.error if not obs.ok else None,
            output=obs.output if obs.output is not None else progress.output,
            level_before=progress.level_before or obs.level_before,
            level_after=obs.level_after or progress.level_after,
            moves=_with_moves(progress.moves, obs.moves),
            attempt=obs.attempt if obs.attempt is not None else progress.attempt,
        )
        hosts[obs.host] = _move(progress, Outcome.OK if obs.ok else Outcome.FAILED, now)
        if hosts[obs.host].step in ACTIVE:
            actions.append(RunStep(obs.host, hosts[obs.host].step))
    elif isinstance(obs, Moved):
        progress = hosts[obs.host]
        if progress.step is not obs.step:
            raise StaleResult(f"{obs.host}: move during {obs.step.value}, host is at {progress.step.value}")
        hosts[obs.host] = replace(progress, moves=_with_moves(progress.moves, (obs.move,)))
        return replace(rollout, hosts=hosts, updated_at=now), ()
    elif isinstance(obs, Resume):
        for name, progress in hosts.items():
            if progress.step is Step.FAILED:
                hosts[name] = _move(progress, Outcome.RESUME, now)
                actions.append(RunStep(name, hosts[name].step))
    elif isinstance(obs, Abort):
        for name, progress in hosts.items():
            if progress.step not in FINAL:
                hosts[name] = _move(progress, Outcome.ABORT, now)
    rollout = replace(rollout, hosts=hosts, updated_at=now)
    if isinstance(obs, Tick):
        actions.extend(RunStep(h, hosts[h].step) for h in rollout.active_hosts())
    status = _status(rollout)
    if status is RolloutStatus.RUNNING and not rollout.failed_hosts():
        index = rollout.current_batch()
        if index is not None and not rollout.active_hosts():
            for name in rollout.batches[index]:
                if hosts[name].step is Step.PENDING:
                    hosts[name] = _move(hosts[name], Outcome.START, now)
                    actions.append(RunStep(name, hosts[name].step))
            rollout = replace(rollout, hosts=hosts)
    status = _status(rollout)
    rollout = replace(rollout, status=status)
    if status is not RolloutStatus.RUNNING and not rollout.active_hosts():
        reason = {
            RolloutStatus.COMPLETE: f"every host at {rollout.target}",
            RolloutStatus.FAILED: "failed on " + ", ".join(_failure(hosts[h]) for h in rollout.failed_hosts()),
            RolloutStatus.ABORTED: "aborted by the operator",
        }.get(status, "")
        actions.append(Finished(status, reason))
    return rollout, tuple(actions)


def new_rollout(rollout_id: str, target: str, batches: tuple[tuple[str, ...], ...], now: float, *,
                levels: dict[str, str | None] | None = None, command: str | None = None,
                restart_agent: bool = True, timeout: float = 120.0, max_unavailable: int = 1) -> Rollout:
    levels = levels or {}
    hosts = {h: HostProgress(h, level_before=levels.get(h)) for b in batches for h in b}
    return Rollout(rollout_id, target, batches, hosts, command=command, restart_agent=restart_agent,
                   timeout=timeout, max_unavailable=max_unavailable, created_at=now, updated_at=now)


def step_medians(rollouts: list[Rollout]) -> dict[str, float]:
    """Median seconds per step over every host of ``rollouts`` (for reports and the benchmark)."""
    by_step: dict[str, list[float]] = {}
    for r in rollouts:
        for p in r.hosts.values():
            for step, seconds in p.durations:
                by_step.setdefault(step, []).append(seconds)
    out = {}
    for step, values in by_step.items():
        values.sort()
        n = len(values)
        out[step] = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return out


__all__ = [
    "ACTIVE", "ACTIVE_ORDER", "FINAL", "TRANSITIONS", "Abort", "Action", "Finished", "HostProgress",
    "IllegalTransition", "Moved", "Observation", "Outcome", "Resume", "Rollout", "RolloutStatus", "RunStep", "StaleResult",
    "Step", "StepResult", "Tick", "new_rollout", "step_medians", "transition",
]
