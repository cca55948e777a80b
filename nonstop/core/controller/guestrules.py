"""Guest rules of ``decide`` (pure): where every guest of the spec should be, pass by pass.

Role, level-triggered, in the order ``decide`` runs them:
- ``remove_unknown``: desired records of guests the spec no longer has go;
- ``place_pending``: guests of the spec without a record get a host — once every host has
  been heard (or the startup grace is over), or the first host heard would get them all;
- ``complete_migrations``: after the agents' live-migration hand-off is ``done``, the desired
  record moves to the destination (same epoch); a ``failed`` one is cleared (the guest stays);
- ``restrand``: guests still assigned to a host that was fenced and not up since (the
  failover found no room then) are placed again once there is room;
- ``guest_failures``: a guest that keeps failing on one host (``max_restarts``, or its agent
  gave up) moves to another host;
- ``evacuate``: hosts in maintenance with ``evacuate`` lose their guests (VMs live);
- ``failback``: a returned host gets its guests back per ``policies.ha.failback``, after its
  stability window (flapping lengthens it; nonstop/core/controller/failback.py);
- ``backends``: every service's backends are the ready replicas of its group, minus any guest
  moved in this very pass (its old copy stops soon).

Must not: read a clock or the store; move a guest that another rule of this pass moved, or
any guest of a host whose failover is under way.
"""

from __future__ import annotations

from nonstop.core.controller import placing
from nonstop.core.controller.backends import desired_backends
from nonstop.core.controller.commands import (
    ClearMigration,
    CompleteMigration,
    PlaceGuest,
    RemoveGuest,
    SetBackends,
)
from nonstop.core.controller.decision import Pass
from nonstop.core.controller.failback import failback_decision
from nonstop.core.controller.guestfail import GuestHealth, guest_verdict
from nonstop.core.controller.ops import Step
from nonstop.core.controller.placing import move_off, rebalance_moves
from nonstop.core.controller.view import UP_LIVENESS
from nonstop.core.guests.migration import FAILED, HANDED_OVER


def remove_unknown(p: Pass) -> None:
    known = set(p.view.known_guests())
    for guest in sorted(g for g, v in p.view.guests.items() if v.desired is not None and g not in known):
        p.add(RemoveGuest(guest, "no longer in the spec"))
        p.emit("guest-removed", guest, "no longer in the spec")
        p.moved.add(guest)
        p.assignments.pop(guest, None)


def place_pending(p: Pass) -> None:
    pending = [g for g in p.view.known_guests() if g not in p.assignments]
    if not pending or "up" not in p.conditions.values():
        return
    unheard = any(p.view.host(h.name).liveness == "unknown" for h in p.view.spec.hosts)
    if unheard and p.view.now - p.view.leading_since < 2 * p.view.startup_grace:
        return
    decision = placing.place_pending(p.view.spec, p.assignments, p.conditions)
    for guest, host in decision.moves:
        epoch = p.view.guests[guest].epoch + 1 if guest in p.view.guests else 1
        p.add(PlaceGuest(guest, host, epoch, f"placed on {host}"))
        p.emit("guest-placed", guest, f"placed on {host}", host=host, epoch=epoch)
        p.assignments[guest] = host
        p.moved.add(guest)
    for guest, reason in decision.unplaced:
        p.note(f"unplaced:{guest}", reason, "unplaceable", guest)


def complete_migrations(p: Pass) -> None:
    for guest, v in sorted(p.view.guests.items()):
        d = v.desired
        if d is None or d.migrate_to is None or guest in p.moved:
            continue
        if v.migration_step in HANDED_OVER:
            reason = f"live migration {d.host} -> {d.migrate_to} handed over"
            p.add(CompleteMigration(guest, d.migrate_to, v.desired_revision, reason))
            p.emit("guest-migrated", guest, reason, source=d.host, target=d.migrate_to)
            p.assignments[guest] = d.migrate_to
            p.moved.add(guest)
        elif v.migration_step == FAILED:
            reason = f"live migration {d.host} -> {d.migrate_to} failed; the guest stays on {d.host}"
            p.add(ClearMigration(guest, v.desired_revision, reason))
            p.emit("migration-failed", guest, reason, source=d.host, target=d.migrate_to)
            p.moved.add(guest)


def _stranded_hosts(p: Pass) -> set[str]:
    out = set()
    for op in p.view.failovers.values():
        if op.step is Step.DONE and p.view.host(op.host).liveness not in UP_LIVENESS:
            up = p.memory.returned.get(op.host)
            if up is None or up <= op.detected_at:
                out.add(op.host)
    return out


def restrand(p: Pass) -> None:
    stranded = _stranded_hosts(p)
    for host in sorted(stranded):
        guests = sorted(g for g, h in p.assignments.items() if h == host and p.may_move(g))
        if not guests:
            continue
        decision = move_off(p.view.spec, p.assignments, p.conditions, guests, avoid=host)
        for guest, target in decision.moves:
            p.move(guest, target, f"failover of {host} finished without room for it; room now", live=False,
                   drain=False)
            p.remember(homes={**p.memory.homes, guest: host})
        for guest, reason in decision.unplaced:
            p.note(f"stranded:{guest}", reason, "unplaceable", guest, f"{host} is fenced: {reason}")


def guest_failures(p: Pass) -> None:
    max_restarts = p.view.spec.policies.ha.max_restarts
    for guest, v in sorted(p.view.guests.items()):
        d, o = v.desired, v.observed
        if d is None or o is None or not p.may_move(guest) or o.host != d.host:
            continue
        if p.conditions.get(d.host) not in ("up", "degraded"):
            continue
        verdict = guest_verdict(GuestHealth(guest, d.host, o.state, o.attempts, o.gave_up, o.failure_reason),
                                max_restarts=max_restarts)
        if not verdict.move:
            continue
        decision = move_off(p.view.spec, p.assignments, p.conditions, [guest], avoid=d.host)
        for g, target in decision.moves:
            p.move(g, target, verdict.reason, live=False)
        for g, reason in decision.unplaced:
            p.note(f"stuck:{g}", reason, "unplaceable", g, f"{verdict.reason}; no other host: {reason}")


def evacuate(p: Pass) -> None:
    for h in p.view.spec.hosts:
        hv = p.view.host(h.name)
        if not hv.maintenance or not hv.evacuate:
            continue
        guests = sorted(g for g, host in p.assignments.items() if host == h.name and p.may_move(g))
        if not guests:
            if not any(host == h.name for host in p.assignments.values()):
                p.note(f"evacuated:{h.name}", "empty", "evacuated", h.name, "no guest left on the host")
            continue
        p.forget(f"evacuated:{h.name}")
        decision = move_off(p.view.spec, p.assignments, p.conditions, guests, avoid=h.name)
        for guest, target in decision.moves:
            if p.move(guest, target, f"evacuating {h.name} (maintenance)", live=True) is not None:
                p.remember(homes={**p.memory.homes, guest: p.memory.homes.get(guest, h.name)})
        for guest, reason in decision.unplaced:
            p.note(f"evac:{guest}", reason, "unplaceable", guest, f"evacuating {h.name}: {reason}")


def failback(p: Pass) -> None:
    ha = p.view.spec.policies.ha
    for host, failures in sorted(p.memory.failures.items()):
        if not failures or p.conditions.get(host) != "up" or p.view.host(host).liveness != "up":
            continue
        if p.memory.failback_done.get(host, 0.0) >= failures[-1]:
            continue
        balanced: tuple[tuple[str, str], ...] = ()
        if ha.failback.value == "balanced":
            balanced = rebalance_moves(p.view.spec, p.assignments, p.conditions).moves
        homes = {g: h for g, h in p.memory.homes.items() if p.may_move(g)}
        decision = failback_decision(
            host=host, policy=ha.failback.value, up_since=p.memory.up_since.get(host), now=p.view.now,
            stability=ha.failback_stability, failures=failures, homes=homes, assignments=p.assignments,
            balanced_moves=balanced,
        )
        topic_text = decision.reason if decision.ready else decision.reason.split(" for ")[0]
        p.note(f"failback:{host}", topic_text, "failback-check", host, decision.reason, ready=decision.ready)
        if not decision.ready:
            continue
        homes_left = dict(p.memory.homes)
        for guest, target in decision.moves:
            if guest in p.view.guests and p.move(guest, target, f"failback to {target} ({ha.failback.value})",
                                                 live=True) is not None and homes_left.get(guest) == target:
                homes_left.pop(guest)
        p.remember(homes=homes_left, failback_done={**p.memory.failback_done, host: p.view.now})
        p.emit("failback", host, decision.reason, moves=[list(m) for m in decision.moves])


def backends(p: Pass) -> None:
    facts = {g: f for g, f in p.view.facts().items() if g not in p.moved}
    states = p.view.host_states()
    for service in p.view.spec.services:
        want = desired_backends(p.view.spec, service, facts, states)
        ready = tuple(b for b in want if b.name not in facts or (b.name, facts[b.name].epoch) in p.view.ready)
        p.add(SetBackends(service.name, ready, f"{len(ready)} ready replica(s)"))
