"""The failover operation as a table (pure): the steps a dead host goes through.

Role: a failover is a multi-step operation persisted in the store (``ops/<id>``, a ``failover``
operation of the one operation model, nonstop/core/operations.py), so
a controller that restarts mid-way resumes at the step it reached instead of starting over or,
worse, skipping the fence. The steps:

    detected --fence-started--> fencing --fenced--> fenced --moved--> moved --serving--> done
    fencing --fence-failed--> fence-failed --fence-started--> fencing      (retry, with back-off)
    detected|fence-failed --host-returned--> aborted   (the host came back before it was fenced)

``fenced`` is the gate: guests are reassigned (epoch bumped) only from ``fenced``; a host that
comes back while being fenced or after it is NOT aborted (it was, or is being, switched off; its
guests belong elsewhere), so ``host-returned`` is absent from those rows. Anything not in the
table raises the operation model's ``IllegalTransition``.

Must not: fence, write the store or read a clock; ``decide`` says what to do and the shell does it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from nonstop.core.operations import Machine


class Step(str, Enum):
    DETECTED = "detected"
    FENCING = "fencing"
    FENCE_FAILED = "fence-failed"
    FENCED = "fenced"
    MOVED = "moved"
    DONE = "done"
    ABORTED = "aborted"


class OpEvent(str, Enum):
    FENCE_STARTED = "fence-started"
    FENCED = "fenced"
    FENCE_FAILED = "fence-failed"
    MOVED = "moved"
    SERVING = "serving"
    HOST_RETURNED = "host-returned"


S, E = Step, OpEvent
TRANSITIONS: dict[Step, dict[OpEvent, Step]] = {
    S.DETECTED: {E.FENCE_STARTED: S.FENCING, E.HOST_RETURNED: S.ABORTED},
    # A fence in flight is seen through: the BMC may already be cutting the power.
    S.FENCING: {E.FENCED: S.FENCED, E.FENCE_FAILED: S.FENCE_FAILED},
    S.FENCE_FAILED: {E.FENCE_STARTED: S.FENCING, E.HOST_RETURNED: S.ABORTED},
    S.FENCED: {E.MOVED: S.MOVED},
    S.MOVED: {E.SERVING: S.DONE},
    S.DONE: {},
    S.ABORTED: {},
}
del S, E

FINAL = frozenset({Step.DONE, Step.ABORTED})
FAILOVER = Machine("failover", {s.value: {e.value: t.value for e, t in row.items()} for s, row in TRANSITIONS.items()},
                   frozenset(s.value for s in FINAL))


@dataclass(frozen=True)
class FailoverOp:
    """A persisted failover: which host, where it is, and the timing of every step."""

    op_id: str
    host: str
    step: Step = Step.DETECTED
    detected_at: float = 0.0
    """Wall-clock seconds of the detection (the controller's clock)."""
    last_heard: float | None = None
    attempts: int = 0
    times: dict[str, float] = field(default_factory=dict)
    """Step name → wall-clock seconds it was reached."""
    fence_agent: str = ""
    fence_detail: str = ""
    moves: tuple[tuple[str, str], ...] = ()
    """(guest, target host) decided at ``fenced``, in priority order."""
    unplaced: tuple[tuple[str, str], ...] = ()
    """(guest, reason) the placement engine could not place."""

    @property
    def final(self) -> bool:
        return self.step in FINAL

    def body(self) -> dict[str, Any]:
        """The kind's own fields of the persisted operation (the header holds id, step, progress)."""
        return {
            "host": self.host, "detected_at": self.detected_at, "last_heard": self.last_heard,
            "attempts": self.attempts, "fence_agent": self.fence_agent, "fence_detail": self.fence_detail,
            "moves": [list(m) for m in self.moves], "unplaced": [list(u) for u in self.unplaced],
        }

    @classmethod
    def from_parts(cls, op_id: str, step: str, progress: dict[str, float], body: dict[str, Any]) -> FailoverOp:
        return cls(
            op_id=op_id, host=str(body["host"]), step=Step(step),
            detected_at=float(body.get("detected_at", 0.0)), last_heard=body.get("last_heard"),
            attempts=int(body.get("attempts", 0)), times={str(k): float(v) for k, v in progress.items()},
            fence_agent=str(body.get("fence_agent", "")), fence_detail=str(body.get("fence_detail", "")),
            moves=tuple((str(g), str(h)) for g, h in body.get("moves", [])),
            unplaced=tuple((str(g), str(r)) for g, r in body.get("unplaced", [])),
        )


def advance(op: FailoverOp, event: OpEvent, now: float, **changes: Any) -> FailoverOp:
    """The op after ``event`` at ``now`` (wall clock), with ``changes`` applied; ``IllegalTransition`` if not allowed."""
    target = Step(FAILOVER.next(op.step.value, event.value, op.host))
    times = dict(op.times)
    times[target.value] = now
    attempts = op.attempts + (1 if event is OpEvent.FENCE_STARTED else 0)
    return replace(op, step=target, times=times, attempts=attempts, **changes)


def fence_retry_delay(attempts: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Back-off between fence attempts: 0.5 s doubling up to 10 s."""
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))
