"""The live-migration operation (pure): its machine, its body, and who owns the guest when.

Role: a live migration is an operation of kind ``migration`` (nonstop/core/operations.py), stored
at ``ops/<id>`` where ``<id>`` is the ``migration_id`` the controller put in the guest's desired
record beside ``migrate_to``. Two agents move it through ``MIGRATION``:

    requested --prepared--> ready --migrated--> done --finished--> finished
    requested|ready --fail--> failed

- the source A creates it at ``requested`` (body: guest, source, destination, the definition
  as it will run on the destination, the fencing epoch);
- the destination B prepares an incoming copy and moves it to ``ready`` with its endpoint and
  its agent's lease (``prepared``), or to ``failed`` when it cannot;
- A migrates: ``done`` with the result (``migrated``) in ONE transaction with the hand-over of
  the guest's runner lock to B, or ``failed`` with the reason; A also fails an operation it
  cannot carry out (no prepared destination in time, its own copy gone);
- B finishes the incoming copy and writes ``finished``.

``done`` and ``finished`` hand the guest over: from then on the destination owns it although
the desired record still says ``host: A, migrate_to: B`` until the controller — the one writer of
desired records — rewrites it as ``handed_over`` says. ``effective_desired`` is that rule, the
one both agents and the controller apply to the unchanged record.

Must not: do I/O, read a clock, draw random ids (the controller draws them), or decide that a
guest should move.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nonstop.core.guests.model import GuestDefinition
from nonstop.core.operations import Machine

KIND = "migration"
REQUESTED, READY, DONE, FINISHED, FAILED = "requested", "ready", "done", "finished", "failed"

MIGRATION = Machine(
    kind=KIND,
    table={
        REQUESTED: {"prepared": READY, "fail": FAILED},
        READY: {"migrated": DONE, "fail": FAILED},
        DONE: {"finished": FINISHED},
        FINISHED: {},
        FAILED: {},
    },
    final=frozenset({FINISHED, FAILED}),
)
"""Who fires what: ``prepared`` and ``finished`` the destination; ``migrated`` the source;
``fail`` the destination at ``requested`` (cannot prepare), the source at ``requested`` (the
destination did not prepare in time) or ``ready`` (the copy failed, or its guest is gone)."""

HANDED_OVER = frozenset({DONE, FINISHED})
"""Steps in which the destination owns the guest."""

OPEN = frozenset({REQUESTED, READY, DONE})
"""Steps in which an agent still has work to do."""


@dataclass(frozen=True)
class MigrationBody:
    """The kind's own fields (``OperationRecord.body``)."""

    guest: str
    source: str
    destination: str
    definition: GuestDefinition
    """The guest as it will run on the destination: ``handed_over`` of the requested record."""
    endpoint: Mapping[str, Any] | None = None
    """Where the destination listens (the driver's endpoint), from ``ready`` on."""
    lease: int | None = None
    """The destination agent's lease at ``ready``: the source hands the runner lock over on it."""
    result: Mapping[str, Any] | None = None
    """The driver's result (total time, downtime, bytes), from ``done`` on."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fencing_epoch(self) -> int:
        return self.definition.fencing_epoch

    def to_json(self) -> dict[str, Any]:
        return {"guest": self.guest, "source": self.source, "destination": self.destination,
                "definition": self.definition.to_dict(), "fencing_epoch": self.fencing_epoch,
                "endpoint": dict(self.endpoint) if self.endpoint is not None else None, "lease": self.lease,
                "result": dict(self.result) if self.result is not None else None, "extra": dict(self.extra)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MigrationBody:
        """The body of a stored record; ``ValueError`` when it is not a migration's."""
        try:
            return cls(guest=str(data["guest"]), source=str(data["source"]), destination=str(data["destination"]),
                       definition=GuestDefinition.from_dict(dict(data["definition"])),
                       endpoint=dict(data["endpoint"]) if data.get("endpoint") is not None else None,
                       lease=int(data["lease"]) if data.get("lease") is not None else None,
                       result=dict(data["result"]) if data.get("result") is not None else None,
                       extra=dict(data.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a migration body: {exc}") from exc


@dataclass(frozen=True)
class MigrationView:
    """What the agents' decision needs of one migration operation."""

    id: str
    step: str
    source: str
    destination: str
    reason: str = ""


def handed_over(definition: GuestDefinition) -> GuestDefinition:
    """The desired record once the destination owns the guest: ``host`` the destination,
    ``migrate_to`` and ``migration_id`` cleared, the same fencing epoch (the controller writes it)."""
    if definition.migrate_to is None:
        return definition
    return definition.with_changes(host=definition.migrate_to, migrate_to=None, migration_id=None)


def names(definition: GuestDefinition | None, migration: MigrationView | None) -> bool:
    """Does the desired record ask for exactly this migration (same id, same two hosts)?"""
    return (definition is not None and migration is not None and definition.migration_id == migration.id
            and definition.migrate_to == migration.destination and definition.host == migration.source)


def effective_desired(definition: GuestDefinition | None, migration: MigrationView | None) -> GuestDefinition | None:
    """The record as the agents act on it: after ``done`` the unchanged request already means
    the guest is the destination's (what the controller's rewrite will say)."""
    if definition is not None and names(definition, migration) and migration is not None \
            and migration.step in HANDED_OVER:
        return handed_over(definition)
    return definition
