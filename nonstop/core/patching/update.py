"""Rolling guest updates as a persisted operation (pure): surge one new replica, then replace the
old ones one at a time, then drop the surge slot; roll back on failed health.

Role: ``GuestUpdate`` is one update of a guest group, an operation of kind ``guest-update``
(nonstop/core/operations.py): its ``OperationHeader`` (generated id, step = the phase,
created/updated, progress, reason — why it rolls back, once it does) and its own data (the group,
old and new version, which replicas are already new). ``advance(update, ok, now, reason)`` is the
only way it moves, through the table ``UPDATE``::

    surge --ok--> replace(0) --next--> replace(1) ... replace(N-1) --ok--> shrink --ok--> done
    surge --nothing-to-replace--> shrink  (a group of no replicas)
    surge | replace(i) | shrink --unhealthy--> rolling-back --ok--> rolled-back

``surge``: the group gets one extra replica of the new version (the service keeps N old replicas
serving); ``replace(i)``: replica i is drained and restarted at the new version on another host
(its old process is removed and a fresh one spawned); ``shrink``: the group goes back to N
replicas, all new. ``rolling-back`` puts every replaced replica back on the old version and the
group back to N replicas of the old version; it has no ``unhealthy`` row: a rollback is retried,
never abandoned. A pair the table lacks raises the one ``IllegalTransition``.

Must not: touch the store, guests or a clock (``now`` is a parameter), or draw ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from nonstop.core.operations import IllegalTransition, Machine, OperationHeader, start, transition
from nonstop.core.patching.steps import header_view

KIND = "guest-update"


class Phase(str, Enum):
    SURGE = "surge"
    REPLACE = "replace"
    SHRINK = "shrink"
    DONE = "done"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"


FINAL_PHASES = frozenset({Phase.DONE, Phase.ROLLED_BACK})

OK, NEXT, NOTHING, UNHEALTHY = "ok", "next", "nothing-to-replace", "unhealthy"

UPDATE = Machine(KIND, {
    Phase.SURGE.value: {OK: Phase.REPLACE.value, NOTHING: Phase.SHRINK.value, UNHEALTHY: Phase.ROLLING_BACK.value},
    Phase.REPLACE.value: {NEXT: Phase.REPLACE.value, OK: Phase.SHRINK.value, UNHEALTHY: Phase.ROLLING_BACK.value},
    Phase.SHRINK.value: {OK: Phase.DONE.value, UNHEALTHY: Phase.ROLLING_BACK.value},
    Phase.ROLLING_BACK.value: {OK: Phase.ROLLED_BACK.value},
    Phase.DONE.value: {},
    Phase.ROLLED_BACK.value: {},
}, frozenset({Phase.DONE.value, Phase.ROLLED_BACK.value}))


@dataclass(frozen=True)
class GuestUpdate:
    header: OperationHeader
    """Operation ``guest-update``: its id, the phase as the step, created/updated, progress."""
    group: str
    replicas: int
    old: dict[str, Any]
    """The group's fields before the update (command, image)."""
    new: dict[str, Any]
    index: int = 0
    """Replica being replaced (phase ``replace``)."""
    replaced: tuple[str, ...] = ()

    @property
    def phase(self) -> Phase:
        """The header's step (``header.id`` is the update's id, ``header.reason`` why it rolls back)."""
        return Phase(self.header.step)

    def body(self) -> dict[str, Any]:
        """The kind's own fields (``OperationRecord.body``)."""
        return {"group": self.group, "replicas": self.replicas, "old": self.old, "new": self.new,
                "index": self.index, "replaced": list(self.replaced)}

    @classmethod
    def from_body(cls, header: OperationHeader, body: Mapping[str, Any]) -> GuestUpdate:
        if header.kind != KIND:
            raise ValueError(f"operation {header.id} is a {header.kind}, not a {KIND}")
        return cls(header, str(body["group"]), int(body["replicas"]), dict(body["old"]), dict(body["new"]),
                   int(body.get("index", 0)), tuple(body.get("replaced", ())))

    def to_dict(self) -> dict[str, Any]:
        """Header and body in one document (what ``nonstop rolling-update --json`` prints)."""
        return {"type": KIND, **header_view(self.header), "update_id": self.header.id, "phase": self.phase.value,
                "reason": self.header.reason or None, **self.body()}

    def surge_name(self) -> str:
        return f"{self.group}-{self.replicas}"

    def current(self) -> str:
        return f"{self.group}-{self.index}"


def new_update(update_id: str, group: str, replicas: int, old: dict[str, Any], new: dict[str, Any],
               now: float) -> GuestUpdate:
    """An update in its first phase (``surge``); ``update_id`` comes from the shell (random)."""
    return GuestUpdate(start(update_id, UPDATE, Phase.SURGE.value, now), group, replicas, dict(old), dict(new))


def advance(update: GuestUpdate, ok: bool, now: float, reason: str | None = None) -> GuestUpdate:
    """The update after its current phase finished (``ok``) or found the new version unhealthy
    (``reason`` says how); ``IllegalTransition`` after a final phase or for an unhealthy rollback."""
    phase = update.phase
    if not ok:
        event = UNHEALTHY
    elif phase is Phase.SURGE and not update.replicas:
        event = NOTHING
    elif phase is Phase.REPLACE and update.index + 1 < update.replicas:
        event = NEXT
    else:
        event = OK
    header = transition(UPDATE, update.header, event, now, reason=None if ok else (reason or "unhealthy"))
    if phase is Phase.REPLACE and ok:
        replaced = (*update.replaced, update.current())
        return replace(update, header=header, replaced=replaced, index=update.index + (event == NEXT))
    return replace(update, header=header)


__all__ = ["FINAL_PHASES", "KIND", "UPDATE", "GuestUpdate", "IllegalTransition", "Phase", "advance", "new_update"]
