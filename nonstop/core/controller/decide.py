"""The controller's brain: ``decide(view, memory, intents, now) -> Decision(commands, memory)`` (pure).

Role: one call is one level-triggered pass over the whole cluster. ``view`` (nonstop/core/
controller/view.py) is a typed snapshot of desired and observed state, the heartbeat verdicts,
the operations in flight, the pending intents and ``now``; ``memory`` is the controller's own
state (nonstop/core/controller/memory.py). The rules run in a fixed order — hosts first (a dead
host's failover outranks everything), then intents, then guests, then backends — against one
``Pass``, which guarantees that no guest gets two hosts in one decision and that later rules
see the moves of earlier ones. Equal input gives equal output: the rules sort what they
iterate, and new ids come from ``view.id_seed``.

The same function runs in the controller (nonstop/controller/controller.py), in the table and
property tests, and in scripted sequences with a fake clock.

Must not: read a clock, a socket or the store; keep state between calls (memory is returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from nonstop.core.controller import guestrules, hostrules
from nonstop.core.controller.decision import Decision, Pass
from nonstop.core.controller.intentrules import handle_intents
from nonstop.core.controller.memory import ControllerMemory
from nonstop.core.controller.view import ClusterView, PendingIntent

RULES = (
    hostrules.track_hosts,
    hostrules.open_failovers,
    hostrules.advance_failovers,
    guestrules.remove_unknown,
    guestrules.complete_migrations,
    handle_intents,
    guestrules.place_pending,
    guestrules.restrand,
    guestrules.guest_failures,
    guestrules.evacuate,
    guestrules.failback,
    guestrules.backends,
)


def decide(view: ClusterView, memory: ControllerMemory, intents: Sequence[PendingIntent] = (),
           now: float | None = None) -> Decision:
    """``intents``: requests without a final outcome, oldest first; ``now``: wall-clock seconds
    (both default to what ``view`` carries)."""
    view = replace(view, intents=tuple(intents) or view.intents, now=view.now if now is None else now)
    p = Pass.start(view, memory)
    for rule in RULES:
        rule(p)
    p.memory = p.memory.trim([h.name for h in view.spec.hosts], view.known_guests())
    return p.finish()


__all__ = ["Decision", "decide"]
