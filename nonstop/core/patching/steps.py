"""The rolling patch as a persisted operation (pure): per-host steps, batches, resume, abort.

Role: a rollout is an operation of kind ``patch-rollout`` (nonstop/core/operations.py) — its
``OperationHeader`` (generated id, step = the rollout's status, created/updated, progress, the
reason of its last status change) and its own data: target level, batches of hosts, one
``HostProgress`` per host. ``transition(rollout, observation, now) -> (rollout, actions)`` is the
only way it changes. Every host walks the same table, ``HOST_STEPS``::

    pending → precheck → enter-maintenance → drain → evacuate → patch → await-agent →
    postcheck → exit-maintenance → failback → done
    any active step --failed--> failed --resume:<step>--> <step> (the step that failed)
    pending | any active step | failed --abort--> aborted

and the rollout's status follows ``ROLLOUT``::

    running --fail--> failed --resume--> running
    running --complete--> complete;  running | failed --abort--> aborted

A pair a table does not have raises the one ``IllegalTransition`` of nonstop/core/operations.py.
A ``Moved`` observation records a guest move once the controller accepted it (the step does not
change): a patcher killed while a live migration is under way still knows, after the resume,
what it moved and so what to fail back.

Batches run one after the other: a batch starts only when every host of the previous batch is
``done``; a ``failed`` host stops the rollout (no further batch starts; hosts of the same batch
already under way finish their steps). The executor (nonstop/patching) persists the rollout after
every transition, so a killed patcher resumes at the step it was in: every step's procedure is
idempotent.

Must not: read a clock (``now`` is a parameter), draw ids, touch the store, or talk to hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from nonstop.core.operations import IllegalTransition, Machine, OperationHeader
from nonstop.core.operations import start as start_operation
from nonstop.core.operations import transition as transition_operation

KIND = "patch-rollout"


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
    """Back to the step that failed: the table's event is ``resume:<that step>``."""
    ABORT = "abort"


ACTIVE_ORDER: tuple[Step, ...] = (
    Step.PRECHECK, Step.ENTER_MAINTENANCE, Step.DRAIN, Step.EVACUATE, Step.PATCH, Step.AWAIT_AGENT,
    Step.POSTCHECK, Step.EXIT_MAINTENANCE, Step.FAILBACK,
)
ACTIVE = frozenset(ACTIVE_ORDER)
FINAL = frozenset({Step.DONE, Step.ABORTED})


def resume_event(failed_step: Step) -> str:
    return f"{Outcome.RESUME.value}:{failed_step.value}"


def _host_table() -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {
        Step.PENDING.value: {Outcome.START.value: Step.PRECHECK.value, Outcome.ABORT.value: Step.ABORTED.value},
        Step.FAILED.value: {**{resume_event(s): s.value for s in ACTIVE_ORDER}, Outcome.ABORT.value: Step.ABORTED.value},
        Step.DONE.value: {},
        Step.ABORTED.value: {},
    }
    for step, after in zip(ACTIVE_ORDER, (*ACTIVE_ORDER[1:], Step.DONE), strict=True):
        table[step.value] = {Outcome.OK.value: after.value, Outcome.FAILED.value: Step.FAILED.value,
                             Outcome.ABORT.value: Step.ABORTED.value}
    return table


HOST_STEPS = Machine(KIND, _host_table(), frozenset(s.value for s in FINAL))
"""One host's steps (``IllegalTransition`` names the host as its subject)."""


class RolloutStatus(str, Enum):
    RUNNING = "running"
    FAILED = "failed"
    ABORTED = "aborted"
    COMPLETE = "complete"


STATUS_EVENTS: dict[RolloutStatus, str] = {
    RolloutStatus.FAILED: "fail", RolloutStatus.COMPLETE: "complete", RolloutStatus.ABORTED: "abort",
    RolloutStatus.RUNNING: "resume",
}
"""The ``ROLLOUT`` event that leads to each status."""

ROLLOUT = Machine(KIND, {
    RolloutStatus.RUNNING.value: {"fail": "failed", "complete": "complete", "abort": "aborted"},
    RolloutStatus.FAILED.value: {"resume": "running", "abort": "aborted"},
    RolloutStatus.COMPLETE.value: {},
    RolloutStatus.ABORTED.value: {},
}, frozenset({RolloutStatus.COMPLETE.value, RolloutStatus.ABORTED.value}))
"""The rollout's status: the ``step`` of its operation header."""


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


def header_view(header: OperationHeader) -> dict[str, Any]:
    """The header fields as plain JSON (for reports and API answers; the store keeps the header
    in its own ``OperationRecord``)."""
    return {"id": header.id, "kind": header.kind, "reason": header.reason, "created_at": header.created_at,
            "updated_at": header.updated_at, "progress": dict(header.progress)}


@dataclass(frozen=True)
class Rollout:
    header: OperationHeader
    """Operation ``patch-rollout``: its id, its status as the step, created/updated, progress."""
    target: str
    batches: tuple[tuple[str, ...], ...]
    hosts: dict[str, HostProgress]
    command: str | None = None
    restart_agent: bool = True
    timeout: float = 120.0
    max_unavailable: int = 1

    @property
    def status(self) -> RolloutStatus:
        """The rollout's status: its header's step (``header.id`` is the rollout's id)."""
        return RolloutStatus(self.header.step)

    def body(self) -> dict[str, Any]:
        """The kind's own fields (``OperationRecord.body``)."""
        return {
            "target": self.target, "batches": [list(b) for b in self.batches],
            "hosts": {h: p.to_dict() for h, p in self.hosts.items()}, "command": self.command,
            "restart_agent": self.restart_agent, "timeout": self.timeout, "max_unavailable": self.max_unavailable,
        }

    @classmethod
    def from_body(cls, header: OperationHeader, body: Mapping[str, Any]) -> Rollout:
        if header.kind != KIND:
            raise ValueError(f"operation {header.id} is a {header.kind}, not a {KIND}")
        return cls(
            header=header, target=str(body["target"]), batches=tuple(tuple(b) for b in body["batches"]),
            hosts={h: HostProgress.from_dict(p) for h, p in body["hosts"].items()},
            command=body.get("command"), restart_agent=bool(body.get("restart_agent", True)),
            timeout=float(body.get("timeout", 120.0)), max_unavailable=int(body.get("max_unavailable", 1)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Header and body in one document (the API's and the report's view)."""
        return {"type": KIND, **header_view(self.header), "rollout_id": self.header.id,
                "status": self.status.value, **self.body()}

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
    resuming = outcome is Outcome.RESUME and progress.failed_step is not None
    event = resume_event(progress.failed_step) if resuming and progress.failed_step else outcome.value
    nxt = Step(HOST_STEPS.next(progress.step.value, event, progress.host))
    durations = progress.durations
    if progress.step in ACTIVE and progress.step_started_at is not None and outcome is not Outcome.ABORT:
        durations = (*durations, (progress.step.value, round(now - progress.step_started_at, 3)))
    if resuming:
        return replace(progress, step=nxt, failed_step=None, error=None, step_started_at=now, durations=durations)
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


def _reason(rollout: Rollout, status: RolloutStatus) -> str:
    if status is RolloutStatus.FAILED:
        return "failed on " + ", ".join(_failure(rollout.hosts[h]) for h in rollout.failed_hosts())
    return {RolloutStatus.COMPLETE: f"every host at {rollout.target}",
            RolloutStatus.ABORTED: "aborted by the operator", RolloutStatus.RUNNING: "resumed"}[status]


def _touch(rollout: Rollout, hosts: dict[str, HostProgress], now: float) -> Rollout:
    return replace(rollout, hosts=hosts, header=replace(rollout.header, updated_at=now))


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
        return _touch(rollout, hosts, now), ()
    elif isinstance(obs, Resume):
        for name, progress in hosts.items():
            if progress.step is Step.FAILED:
                hosts[name] = _move(progress, Outcome.RESUME, now)
                actions.append(RunStep(name, hosts[name].step))
    elif isinstance(obs, Abort):
        for name, progress in hosts.items():
            if progress.step not in FINAL:
                hosts[name] = _move(progress, Outcome.ABORT, now)
    rollout = _touch(rollout, hosts, now)
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
    if status is not rollout.status:
        rollout = replace(rollout, header=transition_operation(
            ROLLOUT, rollout.header, STATUS_EVENTS[status], now, reason=_reason(rollout, status)))
    if status is not RolloutStatus.RUNNING and not rollout.active_hosts():
        actions.append(Finished(status, _reason(rollout, status)))
    return rollout, tuple(actions)


def new_rollout(rollout_id: str, target: str, batches: tuple[tuple[str, ...], ...], now: float, *,
                levels: dict[str, str | None] | None = None, command: str | None = None,
                restart_agent: bool = True, timeout: float = 120.0, max_unavailable: int = 1,
                reason: str = "") -> Rollout:
    """A rollout ``running`` with every host pending; ``rollout_id`` comes from the shell (random)."""
    levels = levels or {}
    hosts = {h: HostProgress(h, level_before=levels.get(h)) for b in batches for h in b}
    header = start_operation(rollout_id, ROLLOUT, RolloutStatus.RUNNING.value, now,
                             reason=reason or f"patch {', '.join(hosts) or 'no host'} to {target}")
    return Rollout(header, target, batches, hosts, command=command, restart_agent=restart_agent,
                   timeout=timeout, max_unavailable=max_unavailable)


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
    "ACTIVE", "ACTIVE_ORDER", "FINAL", "HOST_STEPS", "KIND", "ROLLOUT", "STATUS_EVENTS", "Abort", "Action",
    "Finished", "HostProgress", "IllegalTransition", "Moved", "Observation", "Outcome", "Resume", "Rollout",
    "RolloutStatus", "RunStep", "StaleResult", "Step", "StepResult", "Tick", "header_view", "new_rollout",
    "resume_event", "step_medians", "transition",
]
