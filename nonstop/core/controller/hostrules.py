"""Host rules of ``decide`` (pure): maintenance, up-since, and the failover of a dead host.

Role, level-triggered — each rule looks at the host as it is now:
- ``track_hosts``: remember since when each host is up (a host merely unheard keeps its
  record, so a restarted controller does not restart failback windows) and report hosts
  entering and leaving maintenance;
- ``open_failovers``: a host that is dead, not in maintenance and has no failover under way
  gets a new ``failover`` operation — unless its last failover finished and it has not been
  up since (the same outage seen again, e.g. by a successor controller: no second failover,
  no count against the flap memory);
- ``advance_failovers``: drive each operation one step per pass through its table
  (nonstop/core/controller/ops.py): ``detected`` → fence (the shell runs ``Fence``, reports
  its ``FenceOutcome``) → ``fenced`` → release the dead agent's lease and reassign its guests
  (``plan_failover``: priority order, every filter) under bumped epochs → ``moved`` → ``done``
  when every moved guest runs on its target (or after the serving timeout). A host heard again
  before it was fenced aborts its failover; after the fence started it never does (the BMC may
  already be cutting power). Guests of a host whose fence is not confirmed never move.

Must not: fence, write, or read a clock (``view.now`` is the time).
"""

from __future__ import annotations

from nonstop.core.controller.commands import Fence, MoveGuest, ReleaseHost, SaveFailover
from nonstop.core.controller.decision import Pass
from nonstop.core.controller.ops import FailoverOp, OpEvent, Step, advance, fence_retry_delay
from nonstop.core.controller.placing import failover_moves
from nonstop.core.controller.view import UP_LIVENESS

FALLEN = frozenset({"dead", "suspect"})


def track_hosts(p: Pass) -> None:
    now = p.view.now
    up_since = dict(p.memory.up_since)
    returned = dict(p.memory.returned)
    maintenance = set(p.memory.maintenance)
    for h in p.view.spec.hosts:
        hv = p.view.host(h.name)
        if hv.liveness in UP_LIVENESS and h.name not in up_since:
            up_since[h.name] = returned[h.name] = now
        elif hv.liveness in FALLEN:
            up_since.pop(h.name, None)
        if hv.maintenance and h.name not in maintenance:
            maintenance.add(h.name)
            p.emit("maintenance", h.name, f"entered ({hv.maintenance_by or 'store'}); evacuate={hv.evacuate}",
                   evacuate=hv.evacuate)
        elif not hv.maintenance and h.name in maintenance:
            maintenance.discard(h.name)
            p.emit("maintenance", h.name, "left")
    p.remember(up_since=up_since, returned=returned, maintenance=frozenset(maintenance))


def _latest(p: Pass, host: str) -> FailoverOp | None:
    ops = [op for op in p.view.failovers.values() if op.host == host]
    return max(ops, key=lambda op: op.detected_at) if ops else None


def open_failovers(p: Pass) -> None:
    now = p.view.now
    for h in p.view.spec.hosts:
        hv = p.view.host(h.name)
        if hv.liveness != "dead" or hv.maintenance or p.view.active_failover(h.name) is not None:
            continue
        last = _latest(p, h.name)
        if last is not None and last.step is Step.DONE:
            seen_up = p.memory.returned.get(h.name)
            if seen_up is None or seen_up <= last.detected_at:
                p.note(f"still-down:{h.name}", last.op_id, "host-still-down", h.name,
                       f"not heard; failover {last.op_id} finished and the host was not up since: nothing to do",
                       op=last.op_id)
                continue
        op = FailoverOp(op_id=p.new_id("failover"), host=h.name, detected_at=now, last_heard=hv.last_heard,
                        times={Step.DETECTED.value: now})
        p.remember(failures={**p.memory.failures, h.name: (*p.memory.failures.get(h.name, ()), now)})
        p.forget(f"still-down:{h.name}")
        p.add(SaveFailover(op, "every link silent"))
        p.emit("host-dead", h.name, "every link silent; fencing before failover", op=op.op_id)
        _step(p, op)


def advance_failovers(p: Pass) -> None:
    opened = {c.op.op_id for c in p.commands if isinstance(c, SaveFailover)}
    for op in sorted(p.view.failovers.values(), key=lambda o: o.detected_at):
        if not op.final and op.op_id not in opened:
            _step(p, op)


def _save(p: Pass, op: FailoverOp, why: str) -> FailoverOp:
    p.add(SaveFailover(op, why))
    return op


def _step(p: Pass, op: FailoverOp) -> None:
    """At most one step of ``op`` per pass, except that a new op starts its fence at once."""
    now = p.view.now
    liveness = p.view.host(op.host).liveness
    if op.step is Step.DETECTED:
        _abort_or_fence(p, op, liveness)
    elif op.step is Step.FENCE_FAILED:
        if now >= op.times.get(Step.FENCE_FAILED.value, now) + fence_retry_delay(op.attempts):
            _abort_or_fence(p, op, liveness)
    elif op.step is Step.FENCING:
        result = p.view.fence_results.get(op.op_id)
        if result is None or result.attempt != op.attempts:
            p.add(Fence(op.op_id, op.host, op.attempts, f"failover {op.op_id}: attempt {op.attempts}"))
            return
        text = f"{result.agent}: {result.outcome}: {result.detail}"
        if result.fenced:
            _save(p, advance(op, OpEvent.FENCED, now, fence_agent=result.agent, fence_detail=result.detail), text)
            p.emit("fence", op.host, text, seconds=round(result.seconds, 3),
                   since_detected=round(now - op.detected_at, 3), op=op.op_id)
        else:
            _save(p, advance(op, OpEvent.FENCE_FAILED, now, fence_agent=result.agent, fence_detail=result.detail),
                  text)
            p.emit("fence-failed", op.host, text, attempt=op.attempts, op=op.op_id)
    elif op.step is Step.FENCED:
        _reassign(p, op)
    elif op.step is Step.MOVED:
        pending = _not_running(p, op)
        deadline = op.times.get(Step.MOVED.value, now) + p.view.serving_timeout
        if pending and now < deadline:
            return
        op = _save(p, advance(op, OpEvent.SERVING, now), "moved guests serving")
        times = {k: round(v - op.detected_at, 3) for k, v in op.times.items()}
        p.emit("failover-done", op.host,
               "every moved guest runs again" if not pending else f"not running yet: {sorted(pending)}",
               times=times, not_running=sorted(pending), op=op.op_id)


def _abort_or_fence(p: Pass, op: FailoverOp, liveness: str) -> None:
    """Before the fence starts, a host heard again ends its failover; otherwise fence (again)."""
    now = p.view.now
    if liveness in UP_LIVENESS:
        _save(p, advance(op, OpEvent.HOST_RETURNED, now), "host heard again")
        p.emit("failover-aborted", op.host, "the host is heard again before it was fenced", op=op.op_id)
        return
    op = _save(p, advance(op, OpEvent.FENCE_STARTED, now), "fencing" if op.attempts == 0 else "fence retry")
    p.add(Fence(op.op_id, op.host, op.attempts, f"failover {op.op_id}: attempt {op.attempts}"))


def _others_unheard(p: Pass, host: str) -> bool:
    """A fresh leader has not heard every other host yet (they would count as failed)."""
    if p.view.now - p.view.leading_since >= 2 * p.view.startup_grace:
        return False
    return any(p.view.host(h.name).liveness == "unknown" for h in p.view.spec.hosts
               if h.name != host and not p.view.host(h.name).maintenance)


def _reassign(p: Pass, op: FailoverOp) -> None:
    if _others_unheard(p, op.host):
        return
    now = p.view.now
    p.add(ReleaseHost(op.host, f"fenced by failover {op.op_id}"))
    conditions = dict(p.conditions)
    conditions[op.host] = "failed"
    decision = failover_moves(p.view.spec, p.assignments, conditions, [op.host])
    homes = dict(p.memory.homes)
    moves = []
    for guest, target in decision.moves:
        v = p.view.guests.get(guest)
        if v is None or v.desired is None or guest in p.moved:
            continue
        epoch = max(v.epoch, v.desired.fencing_epoch) + 1
        reason = f"failover of {op.host}: restarting on {target}"
        p.add(MoveGuest(guest, op.host, target, epoch, reason))
        p.emit("guest-moved", guest, reason, source=op.host, target=target, epoch=epoch)
        p.moved.add(guest)
        p.assignments[guest] = target
        homes[guest] = op.host
        moves.append((guest, target))
    for guest, reason in decision.unplaced:
        p.emit("unplaceable", guest, f"failover of {op.host}: {reason}", source=op.host)
    p.remember(homes=homes)
    op = _save(p, advance(op, OpEvent.MOVED, now, moves=tuple(moves), unplaced=tuple(decision.unplaced)),
               "guests reassigned")
    p.emit("failover-moved", op.host, f"{len(moves)} guest(s) reassigned, {len(decision.unplaced)} unplaceable",
           since_detected=round(now - op.detected_at, 3), op=op.op_id)


def _not_running(p: Pass, op: FailoverOp) -> list[str]:
    out = []
    for guest, target in op.moves:
        v = p.view.guests.get(guest)
        if v is None or v.desired is None or v.desired.host != target:
            continue
        if not v.running_on(target):
            out.append(guest)
    return out
