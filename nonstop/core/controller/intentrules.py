"""Intent rules of ``decide`` (pure): requests from people and tools, answered by the one writer.

Role: every intent without a final outcome (nonstop/store/intents.py) is looked at each pass:
- ``maintenance``: ``SetHostState`` and ``done`` at once (``done`` too when already so);
- ``migrate``: refused when the guest is unknown, under a failover, already migrating, or the
  target fails a placement filter (the filter's words); with no target, the best host but
  ``avoid``. Accepted with the chosen target; ``done`` once the guest runs there under its
  current epoch, ``failed`` when its migration was cleared or the serving timeout passed;
- ``replace``: like a cold ``migrate`` with the definition changed; refused when no other
  host fits (never the same host).

Must not: read a clock or the store; answer an intent twice with the same status.
"""

from __future__ import annotations

from nonstop.core.controller.commands import AnswerIntent, SetHostState
from nonstop.core.controller.decision import Pass
from nonstop.core.controller.placing import fits_on, move_off
from nonstop.core.controller.view import PendingIntent
from nonstop.core.intents import IntentRequest

REPLACEABLE = frozenset({"command", "image"})


def handle_intents(p: Pass) -> None:
    for pending in p.view.intents:
        req = pending.request
        if pending.outcome is not None and pending.outcome.status == "accepted":
            _follow(p, pending)
        elif pending.outcome is None:
            if req.kind == "maintenance":
                _maintenance(p, req)
            else:
                _move(p, req)


def _answer(p: Pass, req: IntentRequest, status: str, message: str, **extra: object) -> None:
    p.add(AnswerIntent(req.id, status, message, **extra))  # type: ignore[arg-type]
    p.emit(f"intent-{status}", req.guest or req.host or req.id, f"{req.describe()} ({req.requester}): {message}",
           intent=req.id, requester=req.requester)


def _maintenance(p: Pass, req: IntentRequest) -> None:
    host = req.host or ""
    if host not in {h.name for h in p.view.spec.hosts}:
        _answer(p, req, "refused", f"no host {host!r}")
        return
    hv = p.view.host(host)
    state = "maintenance" if req.enter else "up"
    if hv.maintenance == req.enter and (not req.enter or hv.evacuate == req.evacuate):
        _answer(p, req, "done", f"{host} is already {state}")
        return
    p.add(SetHostState(host, state, req.evacuate, req.requester, req.reason))
    _answer(p, req, "done", f"{host} set to {state}" + (f" (evacuate={req.evacuate})" if req.enter else ""))


def _move(p: Pass, req: IntentRequest) -> None:
    guest = req.guest or ""
    v = p.view.guests.get(guest)
    if v is None or v.desired is None:
        _answer(p, req, "refused", f"no guest {guest!r} is placed")
        return
    d = v.desired
    if guest in p.busy:
        _answer(p, req, "refused", f"{d.host} is being failed over")
        return
    if d.migrate_to is not None:
        _answer(p, req, "refused", f"{guest} is already migrating to {d.migrate_to}")
        return
    if guest in p.moved:
        return  # another rule moves it this pass; decide again on the next one
    if req.kind == "replace":
        unknown = set(req.changes) - REPLACEABLE
        if unknown:
            _answer(p, req, "refused", f"cannot change {', '.join(sorted(unknown))} by replacement")
            return
    if req.target is not None:
        if req.target == d.host and req.kind == "migrate":
            _answer(p, req, "done", f"{guest} already runs on {req.target}", target=req.target, source=d.host)
            return
        if req.target == d.host:
            _answer(p, req, "refused", f"{guest} must move off {d.host} to be replaced")
            return
        why = fits_on(p.view.spec, p.assignments, p.conditions, guest, req.target)
        if why is not None:
            _answer(p, req, "refused", why)
            return
        target = req.target
    else:
        decision = move_off(p.view.spec, p.assignments, p.conditions, [guest], avoid=req.avoid or d.host)
        if not decision.moves:
            reason = decision.unplaced[0][1] if decision.unplaced else "no host"
            _answer(p, req, "refused", f"no other host fits {guest}: {reason}")
            return
        target = decision.moves[0][1]
    changes = dict(req.changes) if req.kind == "replace" else {}
    if "command" in changes and changes["command"] is not None:
        changes["command"] = tuple(str(a) for a in changes["command"])
    live = req.live and req.kind == "migrate"
    command = p.move(guest, target, f"{req.reason} ({req.requester})", live=live, changes=changes)
    if command is None:
        return
    epoch = getattr(command, "epoch", None)
    _answer(p, req, "accepted", f"moving {guest} {d.host} -> {target}", target=target, source=d.host, epoch=epoch)


def _follow(p: Pass, pending: PendingIntent) -> None:
    req, out = pending.request, pending.outcome
    assert out is not None
    v = p.view.guests.get(req.guest or "")
    if v is None or v.desired is None:
        _answer(p, req, "failed", f"{req.guest} is gone", target=out.target, source=out.source)
        return
    d = v.desired
    if d.host == out.target and v.running_on(d.host):
        _answer(p, req, "done", f"{req.guest} runs on {d.host}", target=out.target, source=out.source,
                epoch=v.epoch)
    elif d.host != out.target and d.migrate_to != out.target:
        _answer(p, req, "failed", f"{req.guest} did not reach {out.target}: it is on {d.host}",
                target=out.target, source=out.source)
    elif p.view.now - out.updated_at > p.view.serving_timeout:
        _answer(p, req, "failed", f"{req.guest} not running on {out.target} after {p.view.serving_timeout:.0f}s",
                target=out.target, source=out.source)
