"""Rolling guest updates as a step machine (pure): surge one new replica, then replace the old ones
one at a time, then drop the surge slot; roll back on failed health.

Role: ``GuestUpdate`` is the persisted record of one update of a guest group (old and new
version, which replicas are already new, the phase) and ``advance(update, ok, reason)`` the only
way it moves::

    surge --ok--> replace(0) --ok--> replace(1) ... replace(N-1) --ok--> shrink --ok--> done
    surge | replace(i) --unhealthy--> rolling-back --ok--> rolled-back
    shrink --unhealthy--> rolling-back  (the surge replica could not be dropped cleanly)

``surge``: the group gets one extra replica of the new version (the service keeps N old replicas
serving); ``replace(i)``: replica i is drained and restarted at the new version (moved to another
host, so its old process is removed and a fresh one spawned); ``shrink``: the group goes back to
N replicas, all new. ``rolling-back`` puts every replaced replica back on the old version and the
group back to N replicas of the old version.

Must not: touch the store, guests or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any


class Phase(str, Enum):
    SURGE = "surge"
    REPLACE = "replace"
    SHRINK = "shrink"
    DONE = "done"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"


FINAL_PHASES = frozenset({Phase.DONE, Phase.ROLLED_BACK})


class IllegalUpdateStep(Exception):
    pass


@dataclass(frozen=True)
class GuestUpdate:
    update_id: str
    group: str
    replicas: int
    old: dict[str, Any]
    """The group's fields before the update (command, image)."""
    new: dict[str, Any]
    phase: Phase = Phase.SURGE
    index: int = 0
    """Replica being replaced (phase ``replace``)."""
    replaced: tuple[str, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "guest-update", "update_id": self.update_id, "group": self.group,
                "replicas": self.replicas, "old": self.old, "new": self.new, "phase": self.phase.value,
                "index": self.index, "replaced": list(self.replaced), "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuestUpdate:
        return cls(str(data["update_id"]), str(data["group"]), int(data["replicas"]), dict(data["old"]),
                   dict(data["new"]), Phase(data["phase"]), int(data.get("index", 0)),
                   tuple(data.get("replaced", ())), data.get("reason"))

    def surge_name(self) -> str:
        return f"{self.group}-{self.replicas}"

    def current(self) -> str:
        return f"{self.group}-{self.index}"


def advance(update: GuestUpdate, ok: bool, reason: str | None = None) -> GuestUpdate:
    """The phase after the current one finished (``ok``) or found the new version unhealthy."""
    phase = update.phase
    if phase in FINAL_PHASES:
        raise IllegalUpdateStep(f"update {update.update_id} is {phase.value}")
    if phase is Phase.ROLLING_BACK:
        if not ok:
            raise IllegalUpdateStep("a rollback is retried, never abandoned")
        return replace(update, phase=Phase.ROLLED_BACK)
    if not ok:
        return replace(update, phase=Phase.ROLLING_BACK, reason=reason)
    if phase is Phase.SURGE:
        return replace(update, phase=Phase.REPLACE if update.replicas else Phase.SHRINK, index=0)
    if phase is Phase.REPLACE:
        replaced = (*update.replaced, update.current())
        if update.index + 1 < update.replicas:
            return replace(update, index=update.index + 1, replaced=replaced)
        return replace(update, phase=Phase.SHRINK, replaced=replaced)
    return replace(update, phase=Phase.DONE)


__all__ = ["FINAL_PHASES", "GuestUpdate", "IllegalUpdateStep", "Phase", "advance"]
