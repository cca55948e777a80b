"""Host failure handling: fence, then fail over — a persisted multi-step operation.

Role: run one ``FailoverOp`` (nonstop/core/controller/ops.py) to its end, persisting it in
``ops/failover-<host>-<n>`` after every step so a restarted controller resumes where it was:

1. ``fencing``: Redfish through sushy (``RedfishFence``: ForceOff, verify Off, bounded by
   ``fence_timeout``); when no BMC answers, ``WatchdogWaitFence`` — wait until 2 × the
   self-fence timeout has passed since the host was last heard (its agent has stopped its
   guests by then). Failed attempts are retried with back-off; nothing moves until fenced.
2. ``fenced``: revoke the dead agent's lease (its runner locks go), ``plan_failover`` from the
   placement engine, and for every guest in priority order a new desired record on its target
   host under a bumped fencing epoch; unplaceable guests are logged with the engine's reason.
3. ``moved`` → ``done`` once every moved guest is observed running on its target (or after
   ``serving_timeout``; the op then records which ones were not).

``--step-pause S`` (tests, demos) holds the op S seconds after each persisted step, so a test
can kill the controller at a known step and check that its successor resumes there.

Must not: decide liveness (the monitor does) or placement (the core does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from nonstop.controller import view as cv
from nonstop.core.controller.ops import FailoverOp, OpEvent, Step, advance, fence_retry_delay
from nonstop.core.controller.placing import failover_moves
from nonstop.fence import RedfishFence, WatchdogWaitFence, target_for
from nonstop.fence.base import FenceResult
from nonstop.store import keys
from nonstop.store.base import encode_json

if TYPE_CHECKING:
    from nonstop.controller.controller import Controller

log = logging.getLogger("nonstop.controller.failover")


async def persist(ctl: Controller, op: FailoverOp) -> None:
    await ctl.store.put(keys.op(ctl.cluster, op.op_id), encode_json(op.to_dict()))
    if ctl.step_pause and not op.final:
        # --step-pause: hold every persisted step (tests kill the controller at a known step)
        await asyncio.sleep(ctl.step_pause)


async def load_ops(ctl: Controller) -> list[FailoverOp]:
    ops = []
    for kv in await ctl.store.list(keys.ops_prefix(ctl.cluster)):
        try:
            data = json.loads(kv.value)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("type") == "failover":
            ops.append(FailoverOp.from_dict(data))
    return ops


async def fence_host(ctl: Controller, op: FailoverOp) -> FenceResult:
    spec = ctl.spec
    host_spec = spec.host(op.host)
    timeout = ctl.fence_timeout
    address = ctl.bmcs.get(op.host) or host_spec.bmc.address
    # last_heard is monotonic in the controller's clock, as WatchdogWaitFence expects.
    last_heard = ctl.last_heard(op.host)
    result: FenceResult | None = None
    if address:
        target = target_for(host_spec, password=ctl.bmc_password(op.host), address=address, last_heard=last_heard)
        result = await RedfishFence().fence(target, timeout)
        if result.fenced:
            return result
        await ctl.events.emit("fence-attempt", op.host, f"{result.agent}: {result.outcome.value}: {result.detail}",
                              seconds=round(result.seconds, 3))
    sft = spec.policies.ha.self_fence_timeout
    target = target_for(host_spec, password="", address=None, last_heard=last_heard)
    wait = await WatchdogWaitFence(sft).fence(target, 2 * sft + 1.0)
    if result is not None and not wait.fenced:
        return result
    return wait


async def run_failover(ctl: Controller, op: FailoverOp) -> FailoverOp:
    while not op.final:
        now = time.time()
        if op.step in (Step.DETECTED, Step.FENCE_FAILED):
            if op.step is Step.FENCE_FAILED:
                await asyncio.sleep(fence_retry_delay(op.attempts))
                if ctl.host_state(op.host) in ("up", "link-degraded"):
                    op = advance(op, OpEvent.HOST_RETURNED, time.time())
                    await persist(ctl, op)
                    await ctl.events.emit("failover-aborted", op.host, "the host is heard again before it was fenced")
                    break
            op = advance(op, OpEvent.FENCE_STARTED, time.time())
            await persist(ctl, op)
        elif op.step is Step.FENCING:
            result = await fence_host(ctl, op)
            if result.fenced:
                op = advance(op, OpEvent.FENCED, time.time(), fence_agent=result.agent, fence_detail=result.detail)
                await ctl.events.emit("fence", op.host, f"{result.agent}: {result.outcome.value}: {result.detail}",
                                      seconds=round(result.seconds, 3), since_detected=round(time.time() - op.detected_at, 3))
            else:
                op = advance(op, OpEvent.FENCE_FAILED, time.time(), fence_agent=result.agent, fence_detail=result.detail)
                await ctl.events.emit("fence-failed", op.host, f"{result.agent}: {result.outcome.value}: {result.detail}",
                                      attempt=op.attempts)
            await persist(ctl, op)
        elif op.step is Step.FENCED:
            # Resumed by a fresh controller: hosts it has not heard yet count as failed, so hear
            # them first, or nothing could be placed.
            await ctl.hear_hosts(exclude=op.host)
            view = await cv.read_view(ctl.store, ctl.cluster)
            released = await cv.release_dead_host(ctl.store, ctl.cluster, op.host, view)
            conditions = ctl.conditions(view)
            conditions[op.host] = "failed"
            assignments = view.assignments()
            decision = failover_moves(ctl.spec, assignments, conditions, [op.host])
            for guest, target in decision.moves:
                definition = view.desired.get(guest)
                if definition is None:
                    continue
                epoch = await cv.assign(ctl.store, ctl.cluster, definition, target,
                                        max(view.epochs.get(guest, 0), definition.fencing_epoch))
                ctl.homes[guest] = op.host
                await ctl.events.emit("guest-moved", guest, f"failover of {op.host}: restarting on {target}",
                                      source=op.host, target=target, epoch=epoch)
            for guest, reason in decision.unplaced:
                await ctl.events.emit("unplaceable", guest, f"failover of {op.host}: {reason}", source=op.host)
            op = advance(op, OpEvent.MOVED, time.time(), moves=tuple(decision.moves), unplaced=tuple(decision.unplaced))
            await persist(ctl, op)
            await ctl.events.emit("failover-moved", op.host, f"{len(decision.moves)} guest(s) reassigned, "
                                  f"{len(decision.unplaced)} unplaceable; released locks of {len(released)}",
                                  since_detected=round(time.time() - op.detected_at, 3))
            ctl.wake()
        elif op.step is Step.MOVED:
            deadline = now + ctl.serving_timeout
            pending = {g: h for g, h in op.moves}
            while pending and time.time() < deadline:
                view = await cv.read_view(ctl.store, ctl.cluster)
                for guest, target in list(pending.items()):
                    obs = view.observed.get(guest, {})
                    d = view.desired.get(guest)
                    if d is None or d.host != target or (obs.get("host") == target and obs.get("state") == "running"):
                        pending.pop(guest)
                if pending:
                    await asyncio.sleep(0.05)
            op = advance(op, OpEvent.SERVING, time.time())
            await persist(ctl, op)
            times = {k: round(v - op.detected_at, 3) for k, v in op.times.items()}
            await ctl.events.emit("failover-done", op.host,
                                  "every moved guest runs again" if not pending else f"not running yet: {sorted(pending)}",
                                  times=times, not_running=sorted(pending))
    return op
